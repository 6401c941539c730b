"""Per-epoch map diagnostics and CAM grids of a run, on a fixed batch of validation images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from camssl import viz

if TYPE_CHECKING:
    from camssl.train.loop import Trainer


def diagnostic_batch(t: Trainer, n: int) -> tuple[Tensor, Tensor]:
    """A fixed batch of validation images (the same every epoch).

    Evenly spaced over the validation indices, so a class-ordered data set (an image
    folder) still gives a batch of many classes.
    """
    val = t.split.val
    picks = torch.linspace(0, len(val) - 1, min(n, len(val))).round().long()
    idx = val[picks].to(t.device)
    return t.images[idx], t.labels[idx]


def map_diagnostics(t: Trainer) -> dict[str, float]:
    """Map agreement and blank maps, and CAAM–CAM agreement, of the evaluated model on 64 fixed validation images.

    The CAAM–CAM numbers (:func:`camssl.viz.caam_diagnostics`: one more eval forward) are
    logged for every method, so CAM-loss runs and their baselines compare directly.
    """
    x, _ = diagnostic_batch(t, 64)
    model = t.eval_model()
    out = viz.map_diagnostics(model, x, t.augmenter, t.cfg.diagnostic_layer(), seed=t.cfg.seed)
    out.update(viz.caam_diagnostics(model, x, t.augmenter))
    return out


def write_cam_grid(t: Trainer, tag: str) -> None:
    """figures/cam_<tag>.png (and a TensorBoard image) of 8 fixed validation images."""
    if not (t.cfg.cam_grid and t.dist.main):
        return
    x, y = diagnostic_batch(t, 8)
    layer = t.cfg.diagnostic_layer()
    aligned = viz.aligned_cams(t.eval_model(), x, t.augmenter, layer, torch.Generator().manual_seed(t.cfg.seed))
    fig = viz.cam_grid_figure(aligned, t.augmenter, t.classes, y, f"{t.cfg.method.name}, Grad-CAM at {layer}, {tag}")
    if t.writer is not None:
        t.writer.add_figure(f"cam/{layer}", fig, t.epoch, close=False)
    viz.save_figure(fig, t.run_dir / "figures" / f"cam_{tag.replace(' ', '_')}.png")
