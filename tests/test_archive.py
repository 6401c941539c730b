"""A sweep's archive: finished runs' small files kept in the repository, the tables rebuilt from them on another
machine, and a new machine's sweep skipping what is archived."""

from __future__ import annotations

import json
import shutil

from camssl.cli import main
from camssl.experiments.archive import ARCHIVED_FILES
from conftest import write_spec

SPEC = """\
base: demo
model: {width: 0.125}
split: {n_labeled: 100, val_fraction: 0.04}
optim: {epochs: 2, batch_size: 50, steps_per_epoch: 2}
cam_grid: false
threads: 1
sweep:
  seeds: 2
  ratios: [1.0]
  settings:
    pseudo_label: {method.name: pseudo_label, role: ablation}
  baseline:
    supervised: {method.name: supervised, split.ratio: 0}
"""


def test_archive_keeps_small_files_rebuilds_tables_and_skips_archived_runs(tmp_path, capsys):
    spec = write_spec(tmp_path, SPEC)
    archive = tmp_path / "docs" / "runs" / "tiny"
    only = ["--only", "baseline/*", "--only", "*/s0"]
    sweep = ["sweep", str(spec), "--out", str(tmp_path / "sweep"), "--archive", str(archive), "--jobs", "2"]
    assert main([*sweep, *only]) == 0  # two runs at a time, one thread each
    runs = sorted(p.parent.relative_to(archive).as_posix() for p in archive.rglob("result.json"))
    assert runs == ["baseline/supervised/s0", "baseline/supervised/s1", "r1.0/pseudo_label/s0"]
    for run in runs:
        assert sorted(p.name for p in (archive / run).iterdir()) == sorted(ARCHIVED_FILES)  # no checkpoints
    assert json.loads((archive / "sweep.json").read_text())["runs"]

    shutil.rmtree(tmp_path / "sweep")  # a fresh machine: the sweep directory is gone, the archive came with git
    capsys.readouterr()
    assert main(["table", str(archive), "--out", str(tmp_path / "tables"), "--name", "tiny"]) == 0
    assert "3 of 4 runs finished" in capsys.readouterr().out
    assert "pseudo_label" in (tmp_path / "tables" / "tiny.md").read_text()

    assert main(["sweep", str(spec), "--out", str(tmp_path / "sweep2"), "--archive", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "3 archived" in out
    assert sum("already finished (" in line for line in out.splitlines()) == 3
    assert not (tmp_path / "sweep2" / "baseline" / "supervised" / "s0").exists()  # skipped, not run again
    assert (archive / "r1.0" / "pseudo_label" / "s1" / "result.json").exists()  # the missing run ran and archived
