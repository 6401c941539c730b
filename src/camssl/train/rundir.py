"""Run directories: refuse one in use, create or reopen one, and clean interrupted writes.

Layout::

    config.yaml      the full resolved config
    split.json       the labeled/unlabeled/validation indices (reloaded on resume)
    metrics.jsonl    one record per epoch
    last.pt          checkpoint after the latest finished epoch (atomic)
    best.pt          weights at the best validation accuracy
    tb/              TensorBoard events (``tensorboard --logdir runs``)
    figures/         CAM grids (cam_epoch_0.png, cam_final.png)
    result.json      written at the end
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from camssl import io
from camssl.config import TrainConfig, drop_other_methods_keys, dump_yaml, from_dict, read_yaml
from camssl.data import Split
from camssl.errors import UserError

RUN_FILES = ("config.yaml", "split.json", "metrics.jsonl", "last.pt", "best.pt", "result.json")


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse an output directory that is in use (unless ``overwrite``); writes nothing."""
    holds_run = (run_dir / "config.yaml").exists()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output path '{run_dir}' is a file, not a directory; choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not holds_run and not overwrite:
            raise UserError(
                f"output directory '{run_dir}' is not empty and holds no camssl run; choose another --out or pass --overwrite"
            )
        if holds_run and not overwrite:
            raise UserError(
                f"output directory '{run_dir}' already holds a run; pass --resume {run_dir} to continue it, "
                "--overwrite to replace it, or choose another --out"
            )


def read_run_config(run_dir: Path) -> TrainConfig:
    """The validated config a run directory was started with."""
    cfg = from_dict(TrainConfig, drop_other_methods_keys(read_yaml(Path(run_dir) / "config.yaml")))
    cfg.validate()
    return cfg


def prepare_run_dir(run_dir: Path, cfg: TrainConfig | None, resume: bool, overwrite: bool) -> TrainConfig:
    """Create, check or reopen a run directory; returns the run's config.

    A directory that already holds a run is never touched unless ``resume`` (continue it,
    with its own saved config) or ``overwrite`` (delete that run's files first).
    """
    holds_run = (run_dir / "config.yaml").exists()
    if resume:
        if not holds_run:
            raise UserError(f"cannot resume '{run_dir}': it holds no run (no config.yaml); start a new run with --out")
        return read_run_config(run_dir)
    assert cfg is not None
    check_run_dir(run_dir, overwrite)
    if run_dir.exists() and any(run_dir.iterdir()):
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        remove_stale_temp_files(run_dir)
        for sub in ("tb", "figures"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(run_dir / "config.yaml", dump_yaml(cfg))
    return cfg


def write_start_files(run_dir: Path, cfg: TrainConfig, split: Split, resume: bool) -> None:
    """config.yaml (when the trainer is driven from outside and no run directory was prepared) and split.json."""
    if not (run_dir / "config.yaml").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(run_dir / "config.yaml", dump_yaml(cfg))
    if not (resume and (run_dir / "split.json").exists()):
        split.save(run_dir / "split.json")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a kill interrupted (``.last.pt.*.tmp`` ...).

    They are never read: a file only becomes ``last.pt`` by a complete write and a rename.
    """
    stale = [p for p in run_dir.glob(".*.tmp") if any(p.name.startswith(f".{name}.") for name in RUN_FILES)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.out_dir) / f"{stamp}-{cfg.method.name}-s{cfg.seed}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path
