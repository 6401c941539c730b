"""Per-epoch map diagnostics and CAM grids of a run, on a fixed batch of validation images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camssl import viz
from camssl.augment import Augmenter
from camssl.cam import cam_layer

if TYPE_CHECKING:
    from camssl.config import TrainConfig


def diagnostic_batch(val: Tensor, images: Tensor, labels: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """A fixed batch of the validation images ``val`` (indices into ``images``), the same every epoch.

    Evenly spaced over the validation indices, so a class-ordered data set (an image
    folder) still gives a batch of many classes.
    """
    picks = torch.linspace(0, len(val) - 1, min(n, len(val))).round().long()
    idx = val[picks].to(images.device)
    return images[idx], labels[idx]


def map_diagnostics(model: nn.Module, val: Tensor, images: Tensor, augmenter: Augmenter, layer: str,
                    seed: int) -> dict[str, float]:
    """Map agreement and blank maps at ``layer``, and CAAM–CAM agreement, of ``model`` on 64 fixed validation images.

    The CAAM–CAM numbers (:func:`camssl.viz.caam_diagnostics`: one more eval forward) are
    logged for every method, so CAM-loss runs and their baselines compare directly.
    """
    x, _ = diagnostic_batch(val, images, images.new_zeros(len(images)), 64)
    out = viz.map_diagnostics(model, x, augmenter, layer, seed=seed)
    if cam_layer(model):  # CAM and CAAM need a pooled linear head after a known layer
        out.update(viz.caam_diagnostics(model, x, augmenter))
    return out


def write_cam_grid(model: nn.Module, val: Tensor, images: Tensor, labels: Tensor, augmenter: Augmenter,
                   classes: list[str], cfg: TrainConfig, tag: str, run_dir: Path, writer: Any = None,
                   epoch: int = 0) -> None:
    """figures/cam_<tag>.png (and a TensorBoard image when ``writer`` is given): the aligned Grad-CAM grid of 8
    fixed validation images at the run's diagnostic layer."""
    x, y = diagnostic_batch(val, images, labels, 8)
    layer, seed = cfg.diagnostic_layer(), cfg.seed
    title = f"{cfg.method.name}, Grad-CAM at {layer}, {tag}"
    path = run_dir / "figures" / f"cam_{tag.replace(' ', '_')}.png"
    aligned = viz.aligned_cams(model, x, augmenter, layer, torch.Generator().manual_seed(seed))
    fig = viz.cam_grid_figure(aligned, augmenter, classes, y, title)
    if writer is not None:
        writer.add_figure(f"cam/{layer}", fig, epoch, close=False)
    viz.save_figure(fig, path)
