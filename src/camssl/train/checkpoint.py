"""Checkpoints: what ``last.pt`` / ``best.pt`` hold, writing and restoring them, and loading a run's model.

``last.pt`` holds everything a resumed run needs to continue exactly: weights, EMA,
optimiser, grad scaler, every rank's RNG states, the batch streams' positions, the
method's own state, the best epoch so far and the history. ``best.pt`` holds the
evaluated weights (EMA if used) at the best validation accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from camssl import io
from camssl.config import config_differences
from camssl.errors import UserError
from camssl.train.rundir import read_run_config, remove_stale_temp_files

if TYPE_CHECKING:
    from camssl.config import TrainConfig
    from camssl.train.loop import Trainer

# Config fields that may differ between a checkpoint and the run resuming it (they do not
# change what is computed, only where and how fast; a moved data.source is still checked
# against the split's fingerprint of the training data).
RESUMABLE_CHANGES = ("device", "threads", "progress", "out_dir", "eval_batch_size", "cam_grid",
                     "data.cache_dir", "data.source")


def _error_detail(e: BaseException, limit: int = 200) -> str:
    """The informative line of an exception (load_state_dict's first line only says "Error(s) in ...")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith("Error(s) in loading")), lines[0] if lines else repr(e))
    detail = detail.rstrip(".")
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


def rng_state(t: Trainer) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "aug": t.aug_gen.get_state(),
    }


def set_rng_state(t: Trainer, rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    t.aug_gen.set_state(rng["aug"])


def training_state(t: Trainer, rng_ranks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model_name": t.cfg.model.name,
        "num_classes": t.num_classes,
        "classes": t.classes,
        "config": t.cfg.to_dict(),
        "world": t.dist.world,
        "epoch": t.epoch,
        "global_step": t.global_step,
        "model": t.net.state_dict(),
        "ema": t.ema.module.state_dict() if t.ema else None,
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.stepper.scaler.state_dict(),
        "rng": rng_ranks[0],
        "rng_ranks": rng_ranks,  # every rank's states (one entry for a single process)
        "streams": {
            "labeled": t.labeled_stream.state_dict(),
            "unlabeled": t.unlabeled_stream.state_dict() if t.unlabeled_stream else None,
        },
        "method": t.method.state_dict(),
        "best": t.best,
        "history": t.history,
        "train_time": t.train_time,
        "train_images": t.train_images,
        "elapsed": t.elapsed(),
    }


def save_best(t: Trainer) -> None:
    weights = t.eval_model().state_dict()
    io.torch_save(t.run_dir / "best.pt", {"epoch": t.epoch, "classes": t.classes, "model": weights})


def save_checkpoint(t: Trainer, improved: bool) -> None:
    """last.pt (then best.pt and metrics.jsonl) by rank 0, holding every rank's RNG states."""
    rng_ranks = t.dist.all_gather_object(rng_state(t))
    if t.dist.main:
        io.torch_save(t.run_dir / "last.pt", training_state(t, rng_ranks))
        if improved:
            save_best(t)
        io.write_text(t.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in t.history))
    t.dist.barrier()  # the other ranks may read best.pt later (finish)


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file is a user-facing problem
        raise UserError(
            f"cannot read checkpoint '{path}': {e.__class__.__name__}; it may be corrupt or not a camssl "
            "checkpoint; delete it to restart the run from epoch 1, or start a new run with --out"
        ) from None


def load_checkpoint(t: Trainer) -> None:
    """Restore everything from ``last.pt`` (on every rank)."""
    path = t.run_dir / "last.pt"
    if t.dist.main:
        stale = remove_stale_temp_files(t.run_dir)
        if stale:
            t.log(f"resume: removed {len(stale)} unfinished temporary file(s) of an interrupted write")
    if not path.exists():
        t.log(f"resume: no checkpoint in {t.run_dir} yet; starting from epoch 1")
        return
    state = _read(path)
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"'{path}' is not a camssl training checkpoint; delete it or start a new run with --out")
    fix = "resume the run directory the checkpoint belongs to, or start a new run with --out"
    if state.get("model_name") != t.cfg.model.name or state.get("num_classes") != t.num_classes:
        raise UserError(
            f"checkpoint '{path}' is for {state.get('model_name')} with {state.get('num_classes')} classes, "
            f"but the run's config builds {t.cfg.model.name} with {t.num_classes}; {fix}"
        )
    if state.get("config") is not None:
        diff = config_differences(state["config"], t.cfg.to_dict(), ignore=RESUMABLE_CHANGES)
        if diff:
            shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} in config.yaml" for k, a, b in diff[:3])
            more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
            raise UserError(f"checkpoint '{path}' was written by a different config ({shown}{more}); {fix}")
    try:
        t.net.load_state_dict(state["model"])
        if t.ema and state["ema"] is not None:
            t.ema.module.load_state_dict(state["ema"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.labeled_stream.load_state_dict(state["streams"]["labeled"])
        if t.unlabeled_stream and state["streams"]["unlabeled"]:
            t.unlabeled_stream.load_state_dict(state["streams"]["unlabeled"])
        t.method.load_state_dict(state.get("method") or {})
    except (RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"checkpoint '{path}' does not fit this run: {_error_detail(e)}; {fix}") from None
    t.stepper.scaler.load_state_dict(state["scaler"])
    ranks = state.get("rng_ranks") or [state["rng"]]
    if t.dist.rank < len(ranks):  # another number of processes: rank r continues rank r's stream where it exists
        set_rng_state(t, ranks[t.dist.rank])
    if len(ranks) != t.dist.world:
        t.log(
            f"resume: the checkpoint was written by {len(ranks)} process(es), this run has {t.dist.world}; "
            "training continues, but not bit-exactly as the original run would have"
        )
    t.epoch = state["epoch"]
    t.global_step = state["global_step"]
    t.best = state["best"]
    t.history = state["history"]
    t.train_time = state["train_time"]
    t.train_images = state["train_images"]
    t.elapsed_before = state["elapsed"]
    if t.dist.main:
        _repair_best(t)
    t.log(f"resumed from {path} after epoch {t.epoch} (step {t.global_step})")


def _repair_best(t: Trainer) -> None:
    """Rewrite best.pt if a kill fell between writing last.pt and best.pt (best = the checkpoint's epoch)."""
    best_path = t.run_dir / "best.pt"
    if t.best["epoch"] < 1:
        return
    try:
        saved_epoch = torch.load(best_path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001 - missing or unreadable: rewrite it if we can
        saved_epoch = None
    if saved_epoch == t.best["epoch"]:
        return
    if t.best["epoch"] == t.epoch:
        save_best(t)
        t.log(f"resume: rewrote {best_path} (epoch {t.epoch}), whose write the kill interrupted")
    else:
        t.log(f"warning: {best_path} is from epoch {saved_epoch}, not the best epoch {t.best['epoch']}")


# ---------------------------------------------------------------- a run's model, from outside


def load_run_model(path: str | Path, checkpoint: str = "best") -> tuple[nn.Module, TrainConfig, list[str]]:
    """(model in eval mode on the CPU, the run's TrainConfig, class names) of a run directory or checkpoint file.

    A run directory gives its ``best.pt`` (or ``last.pt`` with ``checkpoint="last"``, the
    EMA weights if the run used them); a ``.pt`` file inside a run directory gives its own
    weights with the run's config.
    """
    from camssl.models import build_model

    path = Path(path)
    run_dir, file = (path, path / f"{checkpoint}.pt") if path.is_dir() else (path.parent, path)
    if not path.exists():
        raise UserError(f"'{path}' is not a camssl run directory (it does not exist); pass the --out of a training run or its .pt file")
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"'{run_dir}' is not a camssl run directory (no config.yaml); pass the --out of a training run")
    cfg = read_run_config(run_dir)
    if not file.exists():
        raise UserError(f"no {file.name} in '{run_dir}' yet (train at least one epoch), or use --checkpoint last")
    state = _read(file)
    if not isinstance(state, dict) or "model" not in state or "classes" not in state:
        raise UserError(f"'{file}' is not a camssl checkpoint (best.pt or last.pt of a training run)")
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    classes = list(state["classes"])
    model = build_model(cfg.model.name, len(classes), width=cfg.model.width, resize_to=cfg.model.resize_to)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"'{file}' does not fit the model of '{run_dir}/config.yaml': {_error_detail(e)}") from None
    return model.eval(), cfg, classes


def load_frozen(path: str | Path, device: torch.device) -> nn.Module:
    """A trained run's model on ``device`` in eval mode, without gradients (e.g. a distillation teacher)."""
    model, _, _ = load_run_model(path)
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def fingerprint(module: nn.Module) -> str:
    """A short hash of a model's weights (identifies a frozen model across resumes)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
