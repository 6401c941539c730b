"""What a run prints and returns: the machine line, the epoch line and the result record."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from camssl.text import fmt_duration, fmt_pct
from camssl.train.state import TrainState

if TYPE_CHECKING:
    from camssl.config import TrainConfig
    from camssl.data import DataBundle, Split
    from camssl.distributed import Dist

ALWAYS_SHOWN = ("map_agreement", "blank_maps", "caam_cam_agreement")  # diagnostics every run logs


def data_lines(bundle: DataBundle, split: Split, split_seed: int, seconds: float) -> list[str]:
    """The header lines on the data and the split."""
    train = bundle.train
    lines = [f"data: {bundle.name}  {len(train.classes)} classes, {len(train)} train / {len(bundle.test)} test "
             f"images at {tuple(train.images.shape[2:])}  ({seconds:.1f}s)"]
    if bundle.skipped:
        lines.append(f"skipped {len(bundle.skipped)} unreadable image(s) (data.skip_bad=true), e.g. {bundle.skipped[0]}")
    lines.append(f"split (seed {split_seed}): {len(split.labeled)} labeled, {len(split.unlabeled)} unlabeled, "
                 f"{len(split.val)} validation; test {len(bundle.test)}" + (" (carved from the data)" if bundle.test_carved else ""))
    return lines


def model_line(cfg: TrainConfig, net: nn.Module, device: torch.device, dist: Dist, steps_per_epoch: int) -> str:
    """The header line on the model, the processes, the method and the budget."""
    n_params = sum(p.numel() for p in net.parameters())
    procs = (f" x {dist.world} processes ({dist.backend}{', SyncBatchNorm' if cfg.sync_bn else ''})"
             if dist.enabled else "")
    size = f"args {cfg.model.args}" if ":" in cfg.model.name else f"width {cfg.model.widths or cfg.model.width}"
    return (f"model: {cfg.model.name} ({size}, {n_params / 1e6:.2f}M parameters) on {device}"
            f"{procs}; method: {cfg.method.name}; {cfg.optim.epochs} epochs x {steps_per_epoch} steps")


def progress_bar(show: bool, steps: int, epoch: int, epochs: int) -> Any:
    """A tqdm bar over an epoch's steps, only on a terminal (None elsewhere)."""
    if not (show and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def machine_line(net: nn.Module, model_name: str, width: Any, batch: int, image_size: tuple[int, int],
                 device: torch.device, precision: str) -> str:
    """The machine's speed for a plain training step of the run's model, so run times can be scaled."""
    from camssl.machine import REFERENCE_YARDSTICK_MS, YARDSTICK, cpu_name, plain_step_seconds, yardstick_ms

    sec = plain_step_seconds(net, batch, image_size, device)
    n = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {n} thread{'s' if n != 1 else ''}"
    line = (f"machine: {where}; trains in {precision}; a plain fp32 training step of {model_name} width {width} "
            f"(batch {batch}) takes {1000 * sec:.0f} ms here ({batch / sec:.0f} img/s)")
    ms = yardstick_ms() if device.type == "cpu" else None
    if ms is not None:
        line += (f"; yardstick {YARDSTICK}: {ms:.0f} ms (times here x {REFERENCE_YARDSTICK_MS / ms:.2f} = on the "
                 f"{REFERENCE_YARDSTICK_MS:.0f} ms reference machine)")
    return line


def epoch_line(r: dict[str, Any], state: TrainState, epochs: int, log_metrics: tuple[str, ...]) -> str:
    """One line per epoch: losses and diagnostics the method declares, validation, time."""
    shown = (*log_metrics, *ALWAYS_SHOWN)
    terms = "  ".join(f"{k} {r[k]:.3f}" for k in shown if k in r)
    if state.best["epoch"] > 0:  # at least one validation so far (eval_every > 1 skips some epochs)
        val = f"val {fmt_pct(r.get('val_acc'))} (best {fmt_pct(state.best['val_acc'])} @{state.best['epoch']})"
    else:
        val = "val — (not validated yet: eval_every)"
    left = epochs - r["epoch"]
    eta = f", ~{fmt_duration(left * state.seconds_per_epoch())} left" if left > 0 else ""
    return (
        f"epoch {r['epoch']:>3}/{epochs}  loss {r['loss']:.3f}  {terms}  {val}  "
        f"{r['epoch_time_s']:.1f}s  {r['images_per_s']:.0f} img/s  [{fmt_duration(state.elapsed())}{eta}]"
    )


def result_record(state: TrainState, test: dict[str, Any], best_test: dict[str, Any], classes: list[str],
                  run: dict[str, Any], online_test_acc: float | None = None) -> dict[str, Any]:
    """result.json: the test accuracies, the best validation, time, and ``run`` (what was trained on what).

    With an EMA the evaluated weights are the EMA's; ``online_test_acc`` is then the final
    epoch's trained (online) weights on the test set, kept as ``test_acc_online``.
    """
    final_val = next((r["val_acc"] for r in reversed(state.history) if "val_acc" in r), None)
    return {
        "test_acc": test["acc"],
        **({"test_acc_online": online_test_acc} if online_test_acc is not None else {}),
        "val_acc": final_val,
        "best_val_acc": state.best["val_acc"],
        "best_val_epoch": state.best["epoch"],
        "test_acc_at_best_val": best_test["acc"],
        "per_class_test_acc": dict(zip(classes, test["per_class"])),
        "test_loss": test["loss"],
        "epochs": state.epoch,
        "steps": state.step,
        "train_time_s": state.train_time,
        "wall_time_s": state.elapsed(),
        "images_per_s": state.train_images / max(state.train_time, 1e-9),
        "n_test": test["n"],
        "torch": torch.__version__,
        **run,
    }


def run_facts(cfg: TrainConfig, split: Split, bundle: DataBundle, device: torch.device, precision: str,
              world: int) -> dict[str, Any]:
    """What was trained on what, for result.json (with the machine's yardstick step, :func:`camssl.machine.yardstick_ms`)."""
    from camssl.machine import yardstick_ms

    return {"n_labeled": len(split.labeled), "n_unlabeled": len(split.unlabeled), "n_val": len(split.val),
            "data": bundle.name, "method": cfg.method.name, "model": cfg.model.name, "device": str(device),
            "precision": precision, "world_size": world, "skipped_images": len(bundle.skipped),
            "yardstick_ms": yardstick_ms() if device.type == "cpu" else None,
            "config": cfg.to_dict()}


def tensorboard(run_dir: Path, purge_step: int | None) -> Any:
    """The run's TensorBoard writer (``tb/``); ``purge_step``: a resume's first step."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)


def add_scalars(writer: Any, record: dict[str, Any], epoch: int) -> None:
    """An epoch record's numbers as TensorBoard scalars (``val/...`` and ``train/...``)."""
    if writer is None:
        return
    for k, v in record.items():
        if k not in ("epoch", "step") and isinstance(v, (int, float)):
            writer.add_scalar(f"{'val' if k.startswith('val') else 'train'}/{k}", v, epoch)
    writer.flush()


def final_line(result: dict[str, Any]) -> str:
    return (
        f"test accuracy {fmt_pct(result['test_acc'])} (final epoch); "
        f"best validation {fmt_pct(result['best_val_acc'])} at epoch {result['best_val_epoch']}, "
        f"test there {fmt_pct(result['test_acc_at_best_val'])}; "
        f"{result['wall_time_s'] / 60:.1f} min, {result['images_per_s']:.0f} img/s"
    )
