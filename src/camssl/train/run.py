"""The entry point of a training run: process-wide settings, the run directory, the trainer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from camssl import distributed
from camssl.config import TrainConfig
from camssl.distributed import Dist
from camssl.errors import UserError
from camssl.train.loop import RANK_SEED_STRIDE, Trainer, _quiet
from camssl.train.report import final_line
from camssl.train.rundir import check_run_dir, default_run_dir, prepare_run_dir


def process_settings(cfg: TrainConfig, rank: int = 0) -> None:
    """What a run sets for the whole process: torch threads, determinism and the global seed.

    Called by :func:`train` (the command line); a notebook or an outer loop that builds a
    :class:`Trainer` itself calls it when it wants the same behaviour.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * rank)


def train(
    cfg: TrainConfig | None,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    **trainer_args: Any,
) -> dict[str, Any]:
    """Train a run end to end (or resume one) and return its result dict.

    ``cfg`` may be None when resuming (the run's saved config is used). Started by
    ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), every process calls this and
    they train together; rank 0 prepares the run directory and writes its files.
    ``trainer_args`` (``data``, ``split``, ``init``) are passed to :class:`Trainer`.
    """
    if resume:
        if run_dir is None:
            raise UserError("nothing to resume: give the run directory (--resume RUN_DIR)")
        cfg = prepare_run_dir(Path(run_dir), None, True, False)  # read-only: safe on every rank
    if cfg is None:
        raise UserError("nothing to train: give a config or a run directory to resume")
    dist, device = distributed.setup(cfg.device)
    try:
        result = _train(cfg, run_dir, resume, overwrite, log, dist, device, trainer_args)
    except UserError:
        distributed.teardown(dist)  # every rank meets a user error at the same point: leave together
        raise
    except BaseException:
        distributed.teardown(dist, clean=False)  # a failure of this rank alone: do not wait for the others
        raise
    distributed.teardown(dist)
    return result


def _train(cfg: TrainConfig, run_dir: str | Path | None, resume: bool, overwrite: bool, log: Callable[[str], None],
           dist: Dist, device: torch.device | None, trainer_args: dict[str, Any]) -> dict[str, Any]:
    main_log = log if dist.main else _quiet
    if run_dir is None:
        run_dir = dist.on_main(lambda: default_run_dir(cfg))
    run_dir = Path(run_dir)
    if not resume:
        dist.on_main(lambda: check_run_dir(run_dir, overwrite))
    elif (run_dir / "result.json").exists():
        main_log(f"run {run_dir} has already finished; its result.json is kept")
        return json.loads((run_dir / "result.json").read_text())
    process_settings(cfg, dist.rank)
    # everything that can fail on the user's input (data, split, model, layers, a checkpoint)
    # fails here, before a new run directory is written
    trainer = Trainer(cfg, run_dir, resume=resume, log=log, dist=dist, device=device, **trainer_args)
    if not resume:
        dist.on_main(lambda: prepare_run_dir(run_dir, cfg, False, overwrite))
    result = trainer.fit()
    main_log(final_line(result))
    main_log(f"run directory: {run_dir}")
    return result
