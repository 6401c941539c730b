"""Checkpoint files: writing ``last.pt`` / ``best.pt``, reading ``last.pt`` back for a resume, loading a run's model.

``last.pt`` holds :meth:`camssl.train.Trainer.state_dict` — everything a resumed run needs to
continue exactly (weights, EMA, optimiser, grad scaler, every rank's RNG states, the batch
streams' positions, the method's state and the :class:`~camssl.train.state.TrainState`) —
and ``best.pt`` the evaluated weights (EMA if used) at the best validation accuracy. Both
describe their model (:mod:`camssl.models.saved`), so either alone is enough to predict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from camssl import io
from camssl.config import RESULT_NEUTRAL_KEYS, config_differences
from camssl.errors import UserError
from camssl.models.saved import error_detail, load_model, read_checkpoint
from camssl.train.rundir import read_run_config, remove_stale_temp_files

if TYPE_CHECKING:
    from camssl.config import TrainConfig
    from camssl.train.state import TrainState

FIX = "resume the run directory the checkpoint belongs to, or start a new run with --out"


def write_run_files(run_dir: Path, state: dict[str, Any], best: dict[str, Any] | None) -> None:
    """last.pt, then best.pt (when ``best`` is given) and metrics.jsonl, each written atomically."""
    io.torch_save(run_dir / "last.pt", state)
    if best is not None:
        io.torch_save(run_dir / "best.pt", best)
    history = state["train_state"]["history"]
    io.write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before the TrainState existed, in today's layout."""
    if "train_state" in state:
        return state
    state = dict(state)
    state["train_state"] = {"epoch": state["epoch"], "step": state["global_step"], "best": state["best"],
                            "history": state["history"], "train_time": state["train_time"],
                            "train_images": state["train_images"], "elapsed_before": state["elapsed"]}
    state.setdefault("rng_ranks", [state["rng"]])
    return state


def read_for_resume(run_dir: Path, cfg: TrainConfig, num_classes: int, log: Callable[[str], None],
                    main: bool) -> dict[str, Any] | None:
    """The checkpoint of ``run_dir`` to resume from (None when there is none yet), checked against the run's config."""
    path = run_dir / "last.pt"
    if main:
        stale = remove_stale_temp_files(run_dir)
        if stale:
            log(f"resume: removed {len(stale)} unfinished temporary file(s) of an interrupted write")
    if not path.exists():
        log(f"resume: no checkpoint in {run_dir} yet; starting from epoch 1")
        return None
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"'{path}' is not a camssl training checkpoint; delete it or start a new run with --out")
    name = (state.get("model_spec") or {}).get("name", state.get("model_name"))
    classes = (state.get("model_spec") or {}).get("num_classes", state.get("num_classes"))
    if name != cfg.model.name or classes != num_classes:
        raise UserError(f"checkpoint '{path}' is for {name} with {classes} classes, but the run's config builds "
                        f"{cfg.model.name} with {num_classes}; {FIX}")
    if state.get("config") is not None:
        diff = config_differences(state["config"], cfg.to_dict(), ignore=RESULT_NEUTRAL_KEYS)
        if diff:
            shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} in config.yaml" for k, a, b in diff[:3])
            more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
            raise UserError(f"checkpoint '{path}' was written by a different config ({shown}{more}); {FIX}")
    return _upgrade(state)


def restore(load: Callable[[], None], path: Path) -> None:
    """Run ``load`` (loading a checkpoint's parts into a run), naming the file when the parts do not fit."""
    try:
        load()
    except (RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"checkpoint '{path}' does not fit this run: {error_detail(e)}; {FIX}") from None


def best_epoch_on_disk(run_dir: Path) -> int | None:
    """The epoch of the weights in ``best.pt`` (None when missing or unreadable)."""
    try:
        return torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001 - missing or unreadable
        return None


def repair_best(run_dir: Path, state: TrainState, best_weights: Callable[[], dict[str, Any]],
                log: Callable[[str], None]) -> None:
    """Rewrite best.pt if a kill fell between writing last.pt and best.pt (best = the checkpoint's epoch)."""
    best, path = state.best["epoch"], run_dir / "best.pt"
    saved = best_epoch_on_disk(run_dir)
    if best < 1 or saved == best:
        return
    if best == state.epoch:
        io.torch_save(path, best_weights())
        log(f"resume: rewrote {path} (epoch {state.epoch}), whose write the kill interrupted")
    else:
        log(f"warning: {path} is from epoch {saved}, not the best epoch {best}")


def load_run_model(path: str | Path, checkpoint: str = "best") -> tuple[nn.Module, TrainConfig, list[str]]:
    """(model in eval mode on the CPU, the run's TrainConfig, class names) of a run directory or checkpoint file.

    A run directory gives its ``best.pt`` (or ``last.pt`` with ``checkpoint="last"``, the
    EMA weights if the run used them); a ``.pt`` file inside a run directory gives its own
    weights with the run's config.
    """
    saved = load_model(path, checkpoint)
    run_dir = saved.path.parent
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"'{run_dir}' is not a camssl run directory (no config.yaml); pass the --out of a training run")
    return saved.model, read_run_config(run_dir), saved.classes
