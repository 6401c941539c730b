"""The sweep specs shipped in configs/: each expands, and the claims their comments make about shared runs hold."""

from __future__ import annotations

import pytest

from camssl import experiments as E
from camssl.config import PRESET_DIR, RESULT_NEUTRAL_KEYS, config_differences, load_config, read_yaml, to_dict

SPECS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if "sweep" in read_yaml(p))


def test_the_list_of_shipped_specs_is_not_empty():
    assert {"fast-sweep", "fast-gradcam-sweep", "fast-camloss-sweep", "fast-lga-sweep", "fast-kd-sweep"} <= set(SPECS)


@pytest.mark.parametrize("name", SPECS)
def test_every_shipped_spec_expands_to_valid_runs(name):
    plan = E.plan_sweep(name)
    assert plan.runs and len({r.id for r in plan.runs}) == len(plan.runs)


def differences(a, b):
    return config_differences(to_dict(a), to_dict(b), ignore=RESULT_NEUTRAL_KEYS)


@pytest.mark.parametrize("name", ["fast-gradcam-sweep", "fast-camloss-sweep", "fast-lga-sweep"])
def test_the_fast_familys_supervised_and_fixmatch_runs_are_those_of_fast_sweep(name):
    """Their comments say the archived runs of docs/runs/fast were copied in: that is honest only if the configs match."""
    fast = {r.id: r.config for r in E.plan_sweep("fast-sweep").runs}
    shared = [r for r in E.plan_sweep(name).runs if r.setting in ("supervised", "fixmatch") and r.seed <= 2]
    assert len(shared) == 6
    for run in shared:
        assert differences(run.config, fast[run.id]) == [], run.id


def test_fast_lgas_lga_plus_vat_is_the_chosen_pilot_plus_vat():
    """fast-lga-sweep's comment: LGA + VAT is the pilot variant chosen on validation (lga-refresh) with VAT added."""
    runs = {(r.setting, r.seed): r.config for r in E.plan_sweep("fast-lga-sweep").runs}
    diff = differences(runs["lga-refresh", 1], runs["lga-refresh+vat", 1])
    assert [(k, b) for k, _, b in diff] == [("method.vat.weight", 0.3)]


def test_fast_sweeps_cpu_preset_row_is_the_cpu_preset():
    run = next(r for r in E.plan_sweep("fast-sweep").runs if r.setting == "cpu-preset" and r.seed == 0)
    assert differences(run.config, load_config("cpu", ["split.ratio=0"])) == []


def test_kd_students_and_teachers_share_each_seeds_split():
    teachers = {r.seed: r.config for r in E.plan_sweep("fast-kd-teachers").runs}
    for run in E.plan_sweep("fast-kd-sweep").runs:
        teacher = teachers[run.seed]
        assert (run.config.split.seed, run.config.split.n_labeled, run.config.split.val_fraction) == \
            (teacher.split.seed, teacher.split.n_labeled, teacher.split.val_fraction)
        if run.config.method.name == "cam_kd":
            assert run.config.method.teacher == f"sweeps/fast-kd-teachers/r10.25/teacher/s{run.seed}/last.pt"
    assert all(t.model.widths == [64, 256, 256] for t in teachers.values())


def test_active_fast_is_the_fast_preset_at_a_quarter_of_its_steps():
    """configs/active-fast.yaml says its task model is the fast preset's fixmatch, 1,000 steps a cycle."""
    import camssl.active.strategies  # noqa: F401  (registers the strategies its active: section names)
    from camssl.active.config import load_active_config

    cfg, acfg = load_active_config("active-fast")
    diff = {k: (a, b) for k, a, b in differences(load_config("fast"), cfg)}
    assert diff == {"optim.epochs": (40, 10), "optim.warmup_epochs": (9.2, 2.3)}
    assert cfg.optim.epochs * cfg.optim.steps_per_epoch == 1000 and cfg.method.name == "fixmatch"
    assert (acfg.initial, acfg.budget, acfg.cycles, acfg.subset, acfg.revival.max_scored) == (250, 250, 3, 10000, 2000)
