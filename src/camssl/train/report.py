"""What a run prints and returns: the epoch line, time estimates, and the result record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from camssl.train.loop import Trainer

ALWAYS_SHOWN = ("map_agreement", "blank_maps", "caam_cam_agreement")  # diagnostics every run logs


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def machine_line(t: Trainer) -> str:
    """The machine's speed for a plain training step of the run's model, so run times can be scaled."""
    from camssl.machine import cpu_name, plain_step_seconds

    b = t.cfg.optim.batch_size
    sec = plain_step_seconds(t.net, b, tuple(t.images.shape[2:]), t.device)
    n = torch.get_num_threads()
    where = torch.cuda.get_device_name(t.device) if t.device.type == "cuda" else f"{cpu_name()}, {n} thread{'s' if n != 1 else ''}"
    return (f"machine: {where}; a plain training step of {t.cfg.model.name} width {t.cfg.model.width} "
            f"(batch {b}) takes {1000 * sec:.0f} ms here ({b / sec:.0f} img/s)")


def epoch_line(t: Trainer, r: dict[str, Any]) -> str:
    """One line per epoch: losses and diagnostics the method declares, validation, time."""
    shown = (*t.method.log_metrics, *ALWAYS_SHOWN)
    terms = "  ".join(f"{k} {r[k]:.3f}" for k in shown if k in r)
    if t.best["epoch"] > 0:  # at least one validation so far (eval_every > 1 skips some epochs)
        val = f"val {fmt_pct(r.get('val_acc'))} (best {fmt_pct(t.best['val_acc'])} @{t.best['epoch']})"
    else:
        val = "val — (not validated yet: eval_every)"
    left = t.cfg.optim.epochs - r["epoch"]
    eta = f", ~{fmt_duration(left * t.seconds_per_epoch())} left" if left > 0 else ""
    return (
        f"epoch {r['epoch']:>3}/{t.cfg.optim.epochs}  loss {r['loss']:.3f}  {terms}  {val}  "
        f"{r['epoch_time_s']:.1f}s  {r['images_per_s']:.0f} img/s  [{fmt_duration(t.elapsed())}{eta}]"
    )


def result_record(t: Trainer, test: dict[str, Any], best_test: dict[str, Any]) -> dict[str, Any]:
    final_val = next((r["val_acc"] for r in reversed(t.history) if "val_acc" in r), None)
    return {
        "test_acc": test["acc"],
        "val_acc": final_val,
        "best_val_acc": t.best["val_acc"],
        "best_val_epoch": t.best["epoch"],
        "test_acc_at_best_val": best_test["acc"],
        "per_class_test_acc": dict(zip(t.classes, test["per_class"])),
        "test_loss": test["loss"],
        "epochs": t.epoch,
        "steps": t.global_step,
        "train_time_s": t.train_time,
        "wall_time_s": t.elapsed(),
        "images_per_s": t.train_images / max(t.train_time, 1e-9),
        "n_labeled": len(t.split.labeled),
        "n_unlabeled": len(t.split.unlabeled),
        "n_val": len(t.split.val),
        "n_test": test["n"],
        "data": t.bundle.name,
        "method": t.cfg.method.name,
        "model": t.cfg.model.name,
        "device": str(t.device),
        "world_size": t.dist.world,
        "skipped_images": len(t.bundle.skipped),
        "torch": torch.__version__,
        "config": t.cfg.to_dict(),
    }


def final_line(result: dict[str, Any]) -> str:
    return (
        f"test accuracy {fmt_pct(result['test_acc'])} (final epoch); "
        f"best validation {fmt_pct(result['best_val_acc'])} at epoch {result['best_val_epoch']}, "
        f"test there {fmt_pct(result['test_acc_at_best_val'])}; "
        f"{result['wall_time_s'] / 60:.1f} min, {result['images_per_s']:.0f} img/s"
    )
