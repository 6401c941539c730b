"""Sweeps and result tables: spec validation, a tiny sweep end to end (with a killed run
resumed and a failing run listed), and the table arithmetic on known numbers."""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from camssl import experiments as E
from camssl.config import dump_yaml
from camssl.data import SplitConfig, load_data, make_split
from camssl.data.sources import DataConfig
from camssl.errors import ConfigError, DataError, UserError
from camssl.train import train
from conftest import TINY_SPEC, fake_sweep, sweep_args, table_args, write_spec

# ---------------------------------------------------------------- the spec and the plan


def test_plan_expands_the_grid_with_paired_seeds_and_stable_names(tmp_path):
    plan = E.plan_sweep(write_spec(tmp_path), ["optim.lr=0.05"])
    ids = [r.id for r in plan.runs]
    assert ids == [
        "baseline/supervised/s0", "r1.0/gradcam-layer3/s0", "r1.0/pseudo_label/s0",
        "baseline/supervised/s1", "r1.0/gradcam-layer3/s1", "r1.0/pseudo_label/s1",
    ]
    for r in plan.runs:
        assert r.config.seed == r.config.split.seed == r.seed
        assert r.config.model.width == 0.125 and r.config.optim.lr == 0.05  # spec section + CLI override
    roles = {r.setting: (r.role, r.layer, r.config.method.name) for r in plan.runs}
    assert roles == {
        "supervised": ("baseline", None, "supervised"),
        "gradcam-layer3": ("method", "layer3", "gradcam"),
        "pseudo_label": ("ablation", None, "pseudo_label"),
    }
    unsaid = E.plan_sweep(write_spec(tmp_path, TINY_SPEC.replace(", role: ablation", ""), "unsaid.yaml"))
    assert {r.setting: r.role for r in unsaid.runs}["pseudo_label"] == "other"  # a role the spec does not say
    base = next(r for r in plan.runs if r.group == "baseline")
    assert base.ratio is None and base.config.split.ratio == 0
    assert {r.config.split.ratio for r in plan.runs if r.group == "grid"} == {1.0}
    assert [E.format_ratio(x) for x in (0.5, 1, 2.0, 0.25)] == ["0.5", "1.0", "2.0", "0.25"]


def test_labeled_and_validation_sets_do_not_depend_on_the_ratio():
    """What makes one supervised baseline per seed a valid pair for every ratio."""
    bundle = load_data(DataConfig(source="mini"))
    labels = bundle.train.labels
    for seed in (0, 1):
        splits = [make_split(labels, 10, SplitConfig(n_labeled=250, ratio=r, seed=seed)) for r in (0.0, 0.5, 1.0, 2.0)]
        for s in splits[1:]:
            assert torch.equal(s.labeled, splits[0].labeled) and torch.equal(s.val, splits[0].val)
        assert [len(s.unlabeled) for s in splits] == [0, 125, 250, 500]


@pytest.mark.parametrize(
    "change, message",
    [
        ("  colour: blue\n", "unknown key sweep.colour"),
        ("  seeds: []\n", "seeds"),
        ("  ratios: [1.0, 1]\n", "ratio twice"),
    ],
)
def test_bad_sweep_section_is_one_clear_error(tmp_path, change, message):
    key = change.split(":")[0].strip()
    text = re.sub(rf"^  {key}:.*\n", "", TINY_SPEC, flags=re.M) + change
    with pytest.raises(ConfigError, match=message) as e:
        E.plan_sweep(write_spec(tmp_path, text))
    assert "\n" not in str(e.value)


def test_unknown_config_keys_and_grid_keys_in_settings_are_rejected(tmp_path):
    bad_key = TINY_SPEC.replace("method.gradcam.layers: [layer3]", "method.gradcam.layerz: [layer3]")
    with pytest.raises(ConfigError, match=r"setting gradcam-layer3: unknown config key method.gradcam.layerz"):
        E.plan_sweep(write_spec(tmp_path, bad_key))
    old_key = TINY_SPEC.replace("method.gradcam.layers: [layer3]", "method.layers: [layer3]")
    with pytest.raises(ConfigError, match=r"setting gradcam-layer3: config key method.layers was renamed: write "
                                          r"method.gradcam.layers instead$"):
        E.plan_sweep(write_spec(tmp_path, old_key))
    bad_role = TINY_SPEC.replace("role: ablation", "role: gradcam")
    with pytest.raises(ConfigError, match=r"pseudo_label: role 'gradcam' is unknown; choose one of: method, ablation, "
                                          r"teacher, other"):
        E.plan_sweep(write_spec(tmp_path, bad_role))
    with pytest.raises(ConfigError, match="unknown config key modle"):
        E.plan_sweep(write_spec(tmp_path, "modle: {width: 1}\n" + TINY_SPEC))
    grid_key = TINY_SPEC.replace("{method.name: pseudo_label, role: ablation}",
                                 "{method.name: pseudo_label, role: ablation, seed: 3}")
    with pytest.raises(ConfigError, match="sets seed, which the sweep's grid sets"):
        E.plan_sweep(write_spec(tmp_path, grid_key))
    with pytest.raises(ConfigError, match="split.ratio"):
        E.plan_sweep(write_spec(tmp_path), ["split.ratio=2"])
    with pytest.raises(ConfigError, match="no 'sweep:' section"):
        E.plan_sweep(write_spec(tmp_path, "base: demo\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        E.plan_sweep(tmp_path / "nope.yaml")


def test_missing_data_and_busy_sweep_dir_fail_before_anything_runs(tmp_path):
    plan = E.plan_sweep(write_spec(tmp_path), ["data.source=/no/such/cifar"])
    with pytest.raises(DataError, match="data.source '/no/such/cifar' does not exist"):
        E.run_sweep(plan, tmp_path / "sw", log=lambda s: None)
    assert not (tmp_path / "sw").exists()
    plan = E.plan_sweep(write_spec(tmp_path))
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".sweep.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another camssl sweep is working"):
            E.run_sweep(plan, out, log=lambda s: None)


def test_command_line_overrides_may_follow_the_options():
    parser = argparse.ArgumentParser(prog="camssl")
    sub = parser.add_subparsers(dest="command", required=True)
    E.add_sweep_arguments(sub.add_parser("sweep"))
    E.add_table_arguments(sub.add_parser("table"))
    args = parser.parse_args(["sweep", "spec.yaml", "--out", "d", "data.source=/tmp/c", "--jobs", "2", "optim.lr=0.1"])
    assert (args.spec, args.out, args.jobs) == ("spec.yaml", "d", 2)
    assert args.overrides == ["data.source=/tmp/c", "optim.lr=0.1"]
    args = parser.parse_args(["table", "d", "--select", "best-val"])
    assert (args.sweep_dir, args.select, args.out) == ("d", "best-val", None)


def test_shipped_specs_expand_to_the_papers_grid():
    for name, model in (("table1-cpu", "resnet18"), ("table1-paper", "resnet50_imagenet")):
        plan = E.plan_sweep(name)
        assert len(plan.runs) == 48 and plan.seeds == [0, 1, 2] and plan.ratios == [0.5, 1.0, 2.0]
        layers = sorted({r.layer for r in plan.runs if r.role == "method"})
        assert layers == ["layer1", "layer2", "layer3", "layer4"]
        assert sum(r.role == "ablation" for r in plan.runs) == 9 and sum(r.role == "baseline" for r in plan.runs) == 3
        assert all(r.config.model.name == model and r.config.split.n_labeled == 5000 for r in plan.runs)
    assert E.plan_sweep("table1-paper").runs[0].config.model.resize_to == 256


def test_tables_name_a_recorded_spec_the_way_a_user_gives_it(tmp_path, monkeypatch):
    from camssl.experiments.spec import spec_label

    # a shipped spec, recorded on another machine (another checkout or site-packages): its name
    assert spec_label("/elsewhere/site-packages/camssl/configs/fast-gradcam-sweep.yaml") == "fast-gradcam-sweep (shipped)"
    assert spec_label("/elsewhere/camssl/configs/not-shipped.yaml") == "/elsewhere/camssl/configs/not-shipped.yaml"
    monkeypatch.chdir(tmp_path)
    assert spec_label(tmp_path / "specs" / "mine.yaml") == "specs/mine.yaml"  # under the working directory: relative
    assert spec_label("/somewhere/else/mine.yaml") == "/somewhere/else/mine.yaml"


def test_dry_run_lists_states_and_writes_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path)
    out = tmp_path / "sw"
    plan = E.plan_sweep(spec)
    other = next(r for r in plan.runs if r.id == "r1.0/pseudo_label/s1")
    (out / other.id).mkdir(parents=True)
    cfg = E.plan_sweep(spec, ["optim.lr=0.5"]).runs[-1].config
    (out / other.id / "config.yaml").write_text(dump_yaml(cfg))  # a run of another config
    assert E.cmd_sweep(sweep_args(str(spec), "--out", str(out), "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "6 runs (0 finished, 0 to resume, 5 new, 1 in conflict)" in text
    assert re.search(r"r1.0/pseudo_label/s1 +conflict .*optim.lr=0.5 there, 0.1 in the plan", text)
    assert sorted(p.name for p in out.iterdir()) == ["r1.0"]  # nothing written


# ---------------------------------------------------------------- a tiny sweep end to end


class Stop(Exception):
    pass


def test_tiny_sweep_end_to_end_resumes_a_killed_run_and_lists_a_failure(tmp_path, capsys):
    spec = write_spec(tmp_path)
    out = tmp_path / "sweep"
    plan = {r.id: r for r in E.plan_sweep(spec).runs}

    # a run killed after its first epoch: config, split, last.pt and one metrics record, no result
    killed = out / "r1.0/pseudo_label/s0"

    def stop_after_epoch_1(msg: str) -> None:
        if msg.startswith("epoch   1/"):
            raise Stop

    with pytest.raises(Stop):
        train(plan["r1.0/pseudo_label/s0"].config, killed, log=stop_after_epoch_1)
    first_epoch = json.loads((killed / "metrics.jsonl").read_text().splitlines()[0])
    assert (killed / "last.pt").exists() and not (killed / "result.json").exists()

    # a run that cannot go on: its checkpoint is corrupt
    broken = out / "baseline/supervised/s1"
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text(dump_yaml(plan["baseline/supervised/s1"].config))
    (broken / "last.pt").write_bytes(b"not a checkpoint")

    assert E.cmd_sweep(sweep_args(str(spec), "--out", str(out), "--jobs", "2")) == 1
    text = capsys.readouterr().out
    assert "6 runs (0 finished, 2 to resume, 4 new); 2 at a time" in text
    assert re.search(
        r"\[\d/6\] r1.0/pseudo_label/s0 done in [\d.]+ min: val [\d.]+% test [\d.]+% \(resumed after epoch 1\)", text
    )
    for rid in ("baseline/supervised/s0", "r1.0/gradcam-layer3/s0", "r1.0/gradcam-layer3/s1", "r1.0/pseudo_label/s1"):
        assert re.search(rf"\[\d/6\] {re.escape(rid)} done in [\d.]+ min: val [\d.]+% test [\d.]+%\n", text), rid
        assert (out / rid / "result.json").exists()
    failed = r"baseline/supervised/s1 FAILED after [\d.]+ min: exit 2: error: cannot read checkpoint"
    assert re.search(r"\[\d/6\] " + failed, text)
    summary = text[text.index("sweep finished"):]
    assert "5 runs done, 0 skipped (already finished), 1 failed" in summary
    assert re.search(
        r"failed runs \(1\).*\n  baseline/supervised/s1: exit 2: error: cannot read checkpoint .*train.log", summary
    )

    # the killed run was continued, not restarted: epoch 1's record is the one written before the kill
    records = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first_epoch
    assert "resumed from" in (killed / "train.log").read_text()
    assert json.loads((killed / "result.json").read_text())["epochs"] == 2

    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["id"] for r in sweep["runs"]] == list(plan)
    assert sweep["sessions"][-1]["failed"] == 1 and sweep["sessions"][-1]["jobs"] == 2

    # fix the broken run; running the same command again retries it and skips the others
    (broken / "last.pt").unlink()
    assert E.cmd_sweep(sweep_args(str(spec), "--out", str(out), "--jobs", "2")) == 0
    text = capsys.readouterr().out
    assert len(re.findall(r"\] \S+ already finished \(val [\d.]+% test [\d.]+%\), skipped", text)) == 5
    assert "1 run done, 5 skipped (already finished), 0 failed" in text
    assert re.search(r"\[6/6\] baseline/supervised/s1 done in", text)
    assert len(json.loads((out / "sweep.json").read_text())["sessions"]) == 2

    # runs of a seed share the split; the baseline has no unlabeled images
    splits = {rid: json.loads((out / rid / "split.json").read_text()) for rid in plan}
    for seed in (0, 1):
        same = [s for rid, s in splits.items() if rid.endswith(f"s{seed}")]
        assert len({json.dumps([s["labeled"], s["val"]]) for s in same}) == 1
    assert splits["baseline/supervised/s0"]["unlabeled"] == []

    # the tables of the real sweep: right rows and columns, every cell filled
    assert E.cmd_table(table_args(str(out))) == 0
    md = (out / "results.md").read_text()
    assert "| ratio | layer3 | baseline (supervised) |" in md
    row = next(l for l in md.splitlines() if l.startswith("| 1.0 | "))
    assert row.count("±") == 2 + 2  # ours and the paper's, for layer3 and the baseline
    assert "## Missing runs" not in md and "6 of 6 finished" in md
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 6 and all(r["finished"] == "True" for r in runs)
    assert (out / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_sweep_killed_mid_run_continues_where_it_stopped(tmp_path):
    """Kill the whole sweep (runner and training process) after a checkpoint, then rerun it."""
    spec = write_spec(tmp_path, TINY_SPEC.replace("epochs: 2", "epochs: 4").replace("seeds: 2", "seeds: [0]")
                      .replace("    gradcam-layer3: {method.name: gradcam, method.gradcam.layers: [layer3], "
                               "role: method}\n", "")
                      .replace("  baseline:\n    supervised: {method.name: supervised, split.ratio: 0}\n", ""))
    out = tmp_path / "sweep"
    script = (
        "import argparse, sys; from camssl import experiments as E; p = argparse.ArgumentParser(); "
        "E.add_sweep_arguments(p); sys.exit(E.cmd_sweep(p.parse_args(sys.argv[1:])))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(spec), "--out", str(out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = out / "r1.0/pseudo_label/s0"
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:  # the checkpoint's last file
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(out / ".sweep.lock") as lock:  # the training process holds the sweep's lock until it is gone
        for _ in range(300):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.1)
        fcntl.flock(lock, fcntl.LOCK_UN)
    done_before = len((run / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done_before < 4 and not (run / "result.json").exists()
    lines: list[str] = []
    assert E.run_sweep(E.plan_sweep(spec), out, log=lines.append) == 0
    assert any("(resumed after epoch" in l for l in lines)
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]


# ---------------------------------------------------------------- the table arithmetic

def csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def runs_csv(out: Path) -> list[dict[str, str]]:
    with open(out / "runs.csv") as f:
        return list(csv.DictReader(f))


def pick(rows, **kw):
    hits = [r for r in rows if all(r[k] == v for k, v in kw.items())]
    assert len(hits) == 1, (kw, hits)
    return hits[0]


def test_t_quantiles_match_the_student_t_distribution():
    def cdf(t: float, df: int) -> float:  # Simpson integration of the density from 0 to t
        c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
        n = 4000
        h = t / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    for df in (1, 2, 3, 4, 5, 9, 10, 19, 30, 60):
        assert cdf(E.t_quantile_975(df), df) == pytest.approx(0.975, abs=2e-5), df
    assert E.t_quantile_975(35) == E.t_quantile_975(30)  # conservative between tabulated values
    assert E.t_quantile_975(1000) == 1.96


def test_mean_std_and_paired_interval_on_known_numbers():
    st = E.Stat.of([70.0, 72.0, 74.0])
    assert (st.n, st.mean, st.std) == (3, 72.0, 2.0)  # sample std, ddof = 1
    assert E.Stat.of([5.0]).std is None and E.Stat.of([]) is None
    d = E.paired_diff({0: 70.0, 1: 72.0, 2: 74.0, 7: 99.0}, {0: 69.0, 1: 70.0, 2: 72.0})
    assert d.seeds == (0, 1, 2) and d.mean == pytest.approx(5 / 3)
    assert d.std == pytest.approx(math.sqrt(1 / 3))
    half = 4.3027 * math.sqrt(1 / 3) / math.sqrt(3)
    assert (d.low, d.high) == (pytest.approx(5 / 3 - half), pytest.approx(5 / 3 + half))
    assert d.excludes_zero
    one = E.paired_diff({0: 1.0}, {0: 0.5})
    assert one.n == 1 and one.low is None and not one.excludes_zero


def test_table_numbers_rows_and_columns(tmp_path, capsys):
    out = fake_sweep(tmp_path)
    assert E.cmd_table(table_args(str(out))) == 0
    assert "21 of 21 runs finished" in capsys.readouterr().out
    rows = csv_rows(out)

    # Table I: mean ± sample std over seeds, baseline repeated on every ratio row, the paper's cell beside
    c = pick(rows, section="table1", metric="val", selection="final", ratio="0.5", setting="gradcam-layer3")
    assert (c["n"], float(c["mean_pct"]), float(c["std_pct"])) == ("3", 72.0, 2.0)
    assert (c["paper_mean_pct"], c["paper_std_pct"]) == ("89.8900", "0.4100")
    c = pick(rows, section="table1", metric="test", selection="final", ratio="0.5", setting="gradcam-layer3")
    assert float(c["mean_pct"]) == pytest.approx(71.0) and c["paper_mean_pct"] == ""
    for ratio in ("0.5", "1.0"):
        b = pick(rows, section="table1", metric="val", selection="final", ratio=ratio, setting="supervised")
        assert float(b["mean_pct"]) == pytest.approx(209 / 3) and b["paper_mean_pct"] == "89.6100"
    c = pick(rows, section="table1", metric="val", selection="best-val", ratio="1.0", setting="gradcam-layer1")
    assert float(c["mean_pct"]) == pytest.approx(76.5)
    c = pick(rows, section="table1", metric="test", selection="best-val", ratio="1.0", setting="gradcam-layer1")
    assert float(c["mean_pct"]) == pytest.approx(74.0)
    assert not [r for r in rows if r["section"] == "table1" and r["setting"] == "pseudo_label"]

    # Table II: the best Grad-CAM setting per ratio, chosen on validation accuracy
    t2 = [r for r in rows if r["section"] == "table2" and r["selection"] == "final" and r["metric"] == "test"]
    assert [(r["ratio"], r["setting"]) for r in t2] == [
        ("0.5", "gradcam-layer3"), ("0.5", "pseudo_label"), ("1.0", "gradcam-layer1"), ("1.0", "pseudo_label"),
    ]
    assert pick(t2, ratio="0.5", setting="pseudo_label")["mean_pct"] == f"{(68 + 69 + 71) / 3:.4f}"

    # paired differences with the Student-t interval
    d = pick(rows, section="paired_diff", metric="val", selection="final", ratio="0.5", setting="gradcam-layer3",
             comparator="pseudo_label")
    half = 4.3027 * math.sqrt(1 / 3) / math.sqrt(3)
    assert float(d["mean_pct"]) == pytest.approx(5 / 3, abs=1e-4)
    assert float(d["ci95_low_pct"]) == pytest.approx(5 / 3 - half, abs=1e-4)
    assert float(d["ci95_high_pct"]) == pytest.approx(5 / 3 + half, abs=1e-4)
    assert float(d["paper_mean_pct"]) == pytest.approx(89.89 - 89.19)
    d = pick(rows, section="paired_diff", metric="val", selection="final", ratio="1.0", setting="gradcam-layer3",
             comparator="supervised")  # differences 3, 0, 1
    sd = math.sqrt(((3 - 4 / 3) ** 2 + (4 / 3) ** 2 + (1 / 3) ** 2) / 2)
    assert float(d["mean_pct"]) == pytest.approx(4 / 3, abs=1e-4)
    assert float(d["std_pct"]) == pytest.approx(sd, abs=1e-4)
    assert float(d["ci95_low_pct"]) == pytest.approx(4 / 3 - 4.3027 * sd / math.sqrt(3), abs=1e-4)

    md = (out / "results.md").read_text()
    assert "**final epoch**" in md and "paper†" in md and "different" in md.lower()
    assert "ablation: `pseudo_label` (its method without L_G, i.e. γ = 0)" in md
    header = "| ratio | layer1 | layer3 | baseline (supervised) |"
    assert md.count(header) == 2  # validation and test
    val_rows = md[md.index("## Table I — validation"):].splitlines()[4:6]
    assert val_rows[0].startswith(
        "| 0.5 | 62.00 ± 2.65 (paper† 88.87 ± 0.88) | 72.00 ± 2.00 (paper† 89.89 ± 0.41) |"
    )
    assert val_rows[1].startswith(
        "| 1.0 | 76.00 ± 1.00 (paper† 89.33 ± 1.47) | 71.00 ± 0.00 (paper† 90.41 ± 0.12) |"
    )
    assert (
        "| 0.5 | layer3 | 72.00 ± 2.00 | 70.33 ± 1.53 | +1.67 **[+0.23, +3.10]** (n=3) | 89.89 (layer3) | 89.19 ± 1.16 |"
    ) in md
    assert "| 1.0 | layer3 | +1.33 [-2.46, +5.13] (n=3) | +0.80 |" in md
    assert "## Missing runs" not in md

    # the ablation's own row: does pseudo-labelling help over the baseline? (differences 1, -1, 2)
    d = pick(rows, section="paired_diff", metric="val", selection="final", ratio="0.5", setting="pseudo_label",
             comparator="supervised")
    assert float(d["mean_pct"]) == pytest.approx(2 / 3, abs=1e-4)
    assert not [r for r in rows if r["section"] == "paired_diff" and r["setting"] == r["comparator"]]
    assert "| 0.5 | ablation (pseudo_label) | +0.67 [-3.13, +4.46] (n=3) | -0.42 | — | — |" in md
    assert "the pseudo-label ablation − the supervised baseline: positive mean in 2 of 2 ratios" in md

    # map diagnostics: the last epoch's record, mean over seeds, at each setting's own layer
    maps = md[md.index("## Grad-CAM map diagnostics"):]
    assert "| ratio | gradcam @layer1 | gradcam @layer3 | pseudo_label @layer3 | supervised @layer3 |" in maps
    assert "| 0.5 | 0.40 / 25% | 0.40 / 25% | 0.40 / 0% | 0.40 / 0% |" in maps
    run = next(r for r in runs_csv(out) if r["id"] == "r0.5/gradcam-layer3/s2")
    assert (float(run["final_map_agreement"]), float(run["final_blank_maps"])) == (0.5, 0.25)

    # the other selection rule in the markdown
    assert E.cmd_table(table_args(str(out), "--select", "best-val", "--out", str(tmp_path / "bv"))) == 0
    md = (tmp_path / "bv" / "results.md").read_text()
    assert "**best validation epoch**" in md and "| 0.5 | 62.50 ± 2.65" in md


def test_table_with_missing_runs_pairs_only_the_seeds_both_have(tmp_path):
    out = fake_sweep(tmp_path, missing=("r0.5/pseudo_label/s2", "baseline/supervised/s1"))
    E.write_tables(out)
    rows = csv_rows(out)
    d = pick(rows, section="paired_diff", metric="val", selection="final", ratio="0.5", setting="gradcam-layer3",
             comparator="pseudo_label")
    assert d["n"] == "2" and float(d["mean_pct"]) == pytest.approx(1.5)  # seeds 0, 1: differences 1, 2
    assert float(d["ci95_high_pct"]) == pytest.approx(1.5 + 12.7062 * math.sqrt(0.5) / math.sqrt(2), abs=1e-4)
    b = pick(rows, section="table1", metric="val", selection="final", ratio="1.0", setting="supervised")
    assert b["n"] == "2" and float(b["mean_pct"]) == pytest.approx(69.0)
    md = (out / "results.md").read_text()
    assert "## Missing runs (2)" in md and "`baseline/supervised/s1`" in md and "19 of 21 finished" in md


def test_regenerating_the_tables_keeps_the_hand_written_reading(tmp_path):
    out = fake_sweep(tmp_path)
    E.write_tables(out)
    md = (out / "results.md").read_text()
    assert E.READING_BEGIN in md and E.READING_END in md
    reading = "## Reading\n\nGrad-CAM helps at layer3 here; the intervals say how much."
    (out / "results.md").write_text(md.replace(E.READING_END, reading + "\n" + E.READING_END))
    (out / "r0.5" / "gradcam-layer3" / "s0" / "result.json").unlink()  # the numbers change, the reading stays
    E.write_tables(out)
    md = (out / "results.md").read_text()
    assert md.count(reading) == 1 and "## Missing runs (1)" in md
    assert md.index("# Results") < md.index(reading) < md.index("## Table I")


def test_table_of_a_directory_without_a_sweep_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="holds no sweep.json"):
        E.cmd_table(table_args(str(tmp_path)))
