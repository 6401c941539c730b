"""Smoke test of the benchmark entry point (tiny sizes; no timing assertions)."""

from __future__ import annotations

import argparse
import json

import pytest

from camssl import bench
from camssl.errors import UserError
from camssl.methods import METHODS

QUICK = ["--quick", "--widths", "0.125", "--batch", "4", "--reps", "2", "--warmup", "1", "--layers", "layer3",
         "--exp-reps", "1"]


def targets_table(text: str) -> dict[str, str]:
    """target -> the result cell of each row of the report's Targets table."""
    section = text.split("\n## Targets", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    header, *body = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    assert header[0] == "target" and header[-1] == "result", header
    assert all(len(row) == len(header) for row in body), body
    return {row[0]: row[-1] for row in body}


def test_bench_writes_report(tmp_path, capsys):
    out = tmp_path / "docs" / "benchmarks.md"
    assert bench.main([*QUICK, "--out", str(out)], prog="camssl bench") == 0
    text = out.read_text()
    for section in ("## Machine", "## How it is measured", "## Targets", "## Step cost — ResNet-18 width 0.125",
                    "## Where the time goes", "## What we tried", "### Memory layout", "### Intra-op threads",
                    "### torch.compile", "## End to end", "## GPU"):
        assert section in text, section
    assert "camssl bench --quick" in text  # the command that produced it
    assert "### Precision: fp32 vs bf16 autocast per method" in text and "| fixmatch |" in text
    steps = ["supervised", "pseudo_label", "gradcam @ layer3 full", "gradcam @ layer3 detach-weights", "views only"]
    if bench.captum_status() is None:  # captum is a test extra; without it the reference is skipped
        steps.append("reference (captum) @ layer3")
    # every other method's step variants, as the methods declare them (Method.bench_variants)
    variants = {key for m in METHODS.values() for key in m.bench_variants} - {"supervised", "pseudo_label"}
    assert variants >= {"vat", "lga/classifier", "lga/all", "lga+vat", "cam_loss", "fixmatch", "fixmatch+gradcam"}
    steps += sorted(variants)
    for step in steps:
        assert f"| {step}" in text, step
    # the same measurements as JSON beside the report (what scripts/gpu_check.py reads)
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["format"] == "camssl-bench" and [w["width"] for w in data["widths"]] == [0.125]
    rows = {r["key"]: r for r in data["widths"][0]["steps"]}
    assert variants | {"supervised", "pseudo_label", "gradcam@layer3/full"} <= set(rows)
    assert rows["pseudo_label"]["x_pseudo_label"] == 1.0
    assert all(r["median_s"] > 0 for r in rows.values())
    assert rows["lga+vat"]["label"] == "lga+vat (vat={'weight': 0.3})" and rows["cam_loss"]["images"] == 4
    expected = [f"gradcam @ layer3 {mode} ÷ pseudo_label (time)" for mode in ("full", "detach-weights")]
    if bench.captum_status() is None:
        expected.append("reference (captum) ÷ gradcam @ layer3 full (time)")
    expected.append("lga (classifier scope) ÷ pseudo_label (time)")
    expected.append("views ÷ pseudo_label step (augmentation share)")
    expected += [f"peak memory gradcam @ layer3 {mode} ÷ pseudo_label" for mode in ("full", "detach-weights")]
    verdicts = targets_table(text)
    assert list(verdicts) == expected
    assert all(verdict in ("PASS", "**MISS**") for verdict in verdicts.values()), verdicts
    met = sum(verdict == "PASS" for verdict in verdicts.values())
    assert f"{met} of {len(expected)} targets met." in text
    printed = capsys.readouterr().out
    assert "Targets" in printed and f"wrote {out}" in printed

    # the end-to-end section (filled by hand) survives a regeneration
    filled = text.replace("_TBD_", "123.4", 1)
    out.write_text(filled)
    args = ["--quick", "--widths", "0.125", "--batch", "2", "--reps", "1", "--warmup", "0", "--layers", "layer4",
            "--modes", "detach-weights", "--no-reference", "--no-experiments", "--no-memory", "--threads", "1",
            "--no-methods"]
    assert bench.main([*args, "--out", str(out)]) == 0
    again = out.read_text()
    assert "123.4" in again and "gradcam @ layer4 detach-weights (closed form)" in again
    assert "| vat" not in again and "| fixmatch" not in again and "lga (classifier scope) ÷" not in again


def test_cli_glue_api():
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args(["--quick", "--layers", "layer1,layer2", "--widths", "0.25"])
    o = bench.options_from_args(args, command="camssl bench")
    assert o.layers == ["layer1", "layer2"] and o.widths == [0.25] and o.batch == 4 and o.unlabeled == 4
    assert o.out == bench.DEFAULT_OUT and not o.compile
    full = bench.options_from_args(parser.parse_args([]), command="camssl bench")
    assert full.widths == [0.5, 1.0] and full.batch == 64 and full.reps >= 10 and full.layers == list(bench.LAYERS)


@pytest.mark.parametrize("flags", [["--layers", "layer9"], ["--modes", "half"], ["--reps", "0"], ["--widths", "-1"]])
def test_bad_options_are_user_errors(flags, capsys):
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    with pytest.raises(UserError):
        bench.options_from_args(parser.parse_args(flags))
    assert bench.main(flags) == 2
    assert capsys.readouterr().err.startswith("error: ")
