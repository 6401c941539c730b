"""`camssl table` for sweeps of any methods: paired comparisons by name, convergence, diagnostics, curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from camssl import experiments as E
from camssl import io
from camssl.errors import UserError
from conftest import fake_sweep, table_args, write_spec

SPEC = """\
base: demo
sweep:
  seeds: [0, 1, 2]
  ratios: [1.0]
  settings:
    cam_loss: {method.name: cam_loss}
    pseudo_label: {method.name: pseudo_label, role: ablation}
  baseline:
    supervised: {method.name: supervised, split.ratio: 0}
"""
# setting -> per-seed final validation accuracy (%); after epoch e of 3 it is final - 10 * (3 - e)
FINAL = {"cam_loss": [71.0, 73.0, 72.0], "pseudo_label": [70.0, 74.0, 69.0], "supervised": [70.0, 71.0, 70.0]}
# cam_loss converges faster: after epoch 1 it is 5 points further ahead than at the end
EARLY_BONUS = {"cam_loss": 5.0}


def method_sweep(tmp_path: Path) -> Path:
    plan = E.plan_sweep(write_spec(tmp_path, SPEC))
    out = tmp_path / "sweep"
    io.write_json(out / "sweep.json", plan.record())
    for r in plan.runs:
        v = FINAL[r.setting][r.seed]
        io.write_json(out / r.id / "result.json", {
            "val_acc": v / 100, "test_acc": (v - 2) / 100, "best_val_acc": v / 100, "test_acc_at_best_val": v / 100,
            "epochs": 3, "steps": 30, "data": "mini-cifar10", "method": r.config.method.name,
            "config": r.config.to_dict(),
        })
        records = []
        for e in (1, 2, 3):
            val = v - 10 * (3 - e) + (EARLY_BONUS.get(r.setting, 0.0) if e == 1 else 0.0)
            rec = {"epoch": e, "val_acc": val / 100, "caam_cam_agreement": 0.1 * e + 0.01 * r.seed}
            if r.setting == "pseudo_label":
                rec["pl_acc"] = 0.2 * e
            records.append(rec)
        (out / r.id / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
    return out


def row_of(md: str, section: str, comparison: str) -> str:
    body = md[md.index(section):]
    body = body[: body.index("\n## ", 1)] if "\n## " in body[1:] else body
    return next(line for line in body.splitlines() if comparison in line)


def test_every_setting_is_paired_with_the_baseline_when_there_is_no_gradcam_setting(tmp_path):
    out = method_sweep(tmp_path)
    E.write_tables(out)
    md = (out / "results.md").read_text()
    line = row_of(md, "## Paired comparisons — validation accuracy", "`cam_loss` − `supervised`")
    # differences 1, 2, 2: mean 5/3, std sqrt(1/3), t(0.975, 2) = 4.3027
    half = 4.3027 * math.sqrt(1 / 3) / math.sqrt(3)
    assert f"+1.67 **[{5 / 3 - half:+.2f}, {5 / 3 + half:+.2f}]** (n=3)" in line
    assert "72.00 ± 1.00 (n=3)" in line and "70.33 ± 0.58 (n=3)" in line
    # pseudo_label − supervised: 0, 3, -1 → interval over zero, not bold
    line = row_of(md, "## Paired comparisons — validation accuracy", "`pseudo_label` − `supervised`")
    assert "+0.67 [" in line and "**" not in line
    # a sweep of other methods has no Grad-CAM paper numbers beside its cells, and lists every setting
    assert "paper†" not in md and "## Table I" not in md
    assert "ablation: `pseudo_label` (the spec's `role: ablation` setting)" in md and "L_G" not in md
    acc = md[md.index("## Accuracy — validation accuracy"):]
    assert "| 1.0 | 72.00 ± 1.00 | 71.00 ± 2.65 | 70.33 ± 0.58 |" in acc.splitlines()[4]
    # test accuracy is val - 2 for every run: the same differences
    assert "+1.67 **[" in row_of(md, "## Paired comparisons — test accuracy", "`cam_loss` − `supervised`")


def test_named_comparisons_convergence_and_diagnostics_from_the_command_line(tmp_path, capsys):
    out = method_sweep(tmp_path)
    docs = tmp_path / "docs"
    args = table_args(str(out), "--out", str(docs), "--name", "results-x", "--compare", "cam_loss:pseudo_label",
                      "--epochs", "1,3", "--curves", "caam_cam_agreement,pl_acc")
    assert E.cmd_table(args) == 0
    capsys.readouterr()
    md = (docs / "results-x.md").read_text()
    assert {p.name for p in docs.iterdir()} == {"results-x.md", "results-x.csv", "results-x-runs.csv",
                                                "results-x-figure3.png", "results-x-curves.png"}
    assert "`cam_loss` − `supervised`" not in md  # --compare replaces the default pairs
    # final: 1, -1, 3 → mean +1.00; after epoch 1 the 5-point head start shows: +6.00
    assert "+1.00 [" in row_of(md, "## Paired comparisons — validation accuracy (", "`cam_loss` − `pseudo_label`")
    assert "+6.00 **[+1.03, +10.97]**" in row_of(md, "after epoch 1, %", "`cam_loss` − `pseudo_label`")
    assert "+1.00 [" in row_of(md, "after epoch 3, %", "`cam_loss` − `pseudo_label`")
    # final-epoch diagnostics: agreement 0.3 + 0.01 * seed → 0.310 ± 0.010; pl_acc only for pseudo_label
    diag = row_of(md, "## Training diagnostics at the final epoch", "| cam_loss |")
    assert "0.310 ± 0.010" in diag and diag.rstrip().endswith("| — |")
    assert "0.600" in row_of(md, "## Training diagnostics at the final epoch", "| pseudo_label |")
    curves = md[md.index("## Per-epoch curves"):]
    assert "| 2 | 0.210 | 0.400 |" in curves  # pseudo_label: agreement 0.2 + 0.01, pl_acc 0.4 at epoch 2
    assert (docs / "results-x-curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_comparison_arguments_are_one_line_errors(tmp_path):
    out = method_sweep(tmp_path)
    for argv, match in ((["--compare", "cam_loss"], "is not SETTING:REFERENCE"),
                        (["--compare", "cam_loss:nope"], "has no setting 'nope'; its settings: cam_loss, pseudo_label"),
                        (["--epochs", "1,x"], "must be comma-separated epoch numbers"),
                        (["--epochs", "0"], "epochs count from 1"),
                        (["--name", "../x"], "plain file name")):
        with pytest.raises(UserError, match=match):
            E.cmd_table(table_args(str(out), *argv))
    assert not (out / "results.md").exists()  # nothing written


def test_gradcam_sweeps_keep_their_tables_and_get_no_default_pairs(tmp_path):
    out = fake_sweep(tmp_path)
    E.write_tables(out)
    md = (out / "results.md").read_text()
    assert "## Table II" in md and "## Paired comparisons —" not in md
    E.write_tables(out, compare=["gradcam-layer3:pseudo_label"])
    md = (out / "results.md").read_text()
    # r0.5: 70-69, 72-70, 74-72 → +1.67, the number the Grad-CAM paired-differences table also shows
    assert "+1.67 **[" in row_of(md, "## Paired comparisons — validation accuracy", "| 0.5 | `gradcam-layer3`")


def test_the_trained_weights_are_compared_beside_their_ema_where_runs_recorded_them(tmp_path):
    out = method_sweep(tmp_path)
    E.write_tables(out)
    assert "trained weights" not in (out / "results.md").read_text()  # no run recorded test_acc_online
    online_drop = {"cam_loss": 5.0, "supervised": 3.0}
    for result in out.rglob("result.json"):
        rec = json.loads(result.read_text())
        setting, seed = result.parent.parent.name, int(result.parent.name[1:])
        if setting in online_drop and not (setting == "supervised" and seed == 2):  # supervised s2 lacks it
            rec["test_acc_online"] = (FINAL[setting][seed] - online_drop[setting]) / 100
            io.write_json(result, rec)
    E.write_tables(out)
    md = (out / "results.md").read_text()
    # seeds 0 and 1 only: (71 - 5) - (70 - 3) = -1, (73 - 5) - (71 - 3) = 0
    line = row_of(md, "## Paired comparisons — test accuracy of the trained weights", "`cam_loss` − `supervised`")
    assert "67.00 ± 1.41 (n=2)" in line and "67.50 ± 0.71 (n=2)" in line and "-0.50 [" in line
    E.write_tables(out, select="best-val")  # the online weights are the final epoch's: no such section
    assert "trained weights" not in (out / "results.md").read_text()
