"""Seeing the maps: aligned Grad-CAM of an image and its augmented view, and CAM grids.

:func:`aligned_cams` computes, for a batch, everything Grad-CAM consistency compares:
the map of the original image, the map of a strong view, the original's map carried
into the strong view through the view's exact geometry, and the valid-pixel mask.
:func:`map_diagnostics` condenses it into numbers logged every epoch (the mean Pearson
correlation of the aligned maps over valid pixels, and the share of blank maps), and
:func:`cam_grid_figure` draws it like the paper's Fig. 2. :func:`caam_diagnostics` and
:func:`caam_grid_figure` do the same for CAM-loss's maps (CAM of the prediction and CAAM
at the last stage).
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from camssl import io
from camssl.augment import Augmenter, View, carry
from camssl.cam import caam, cam, cam_layer, fc_weight, grad_cam, normalize_maps, upsample_maps


@dataclass
class AlignedCams:
    original: View
    strong: View
    probs: Tensor  # B×C softmax of the original view (eval mode)
    classes: Tensor  # B pseudo-labels (argmax on the original view), used for both maps
    map_original: Tensor  # B×H×W Grad-CAM of the original, upsampled to input resolution
    map_strong: Tensor  # B×H×W Grad-CAM of the strong view, upsampled
    map_carried: Tensor  # B×H×W the original's map carried into the strong view
    valid: Tensor  # B×H×W 1 where the strong pixel comes from inside the original image


def aligned_cams(model: nn.Module, x: Tensor, augmenter: Augmenter, layer: str, gen: torch.Generator) -> AlignedCams:
    """Grad-CAM maps of ``x`` (uint8) and of a strong view, aligned; the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        size = (x.shape[2], x.shape[3])
        original = augmenter.original(x)
        strong = augmenter.strong(x, gen)
        with torch.enable_grad():
            # inputs that require grad give the graph even for a frozen model (an EMA copy)
            logits, feats = model(original.images.detach().requires_grad_(), taps=[layer])
            probs = torch.softmax(logits.detach().float(), 1)
            classes = probs.argmax(1)
            m_orig = grad_cam(logits, feats, classes, mode="detach-weights", model=model)[layer].detach()
            logits_s, feats_s = model(strong.images.detach().requires_grad_(), taps=[layer])
            m_strong = grad_cam(logits_s, feats_s, classes, mode="detach-weights", model=model)[layer].detach()
        carried, valid = carry(m_orig[:, None], strong.theta, size)
        return AlignedCams(
            original=original,
            strong=strong,
            probs=probs,
            classes=classes,
            map_original=upsample_maps(m_orig, size),
            map_strong=upsample_maps(m_strong, size),
            map_carried=carried[:, 0],
            valid=valid[:, 0],
        )
    finally:
        model.train(was_training)


def pearson(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Per-sample Pearson correlation of ``a`` and ``b`` (B×H×W) over ``mask``; 0 for constant maps."""
    w = mask.float()
    n = w.sum((1, 2)).clamp_min(1)
    ma = (a * w).sum((1, 2)) / n
    mb = (b * w).sum((1, 2)) / n
    da, db = (a - ma[:, None, None]) * w, (b - mb[:, None, None]) * w
    cov = (da * db).sum((1, 2))
    den = (da.pow(2).sum((1, 2)) * db.pow(2).sum((1, 2))).sqrt()
    return torch.where(den > 1e-12, cov / den.clamp_min(1e-12), torch.zeros_like(cov))


def map_diagnostics(model: nn.Module, x: Tensor, augmenter: Augmenter, layer: str, seed: int = 0) -> dict[str, float]:
    """How consistent the model's Grad-CAM maps are on ``x`` (uint8), in eval mode.

    ``map_agreement``: mean Pearson correlation between each image's map carried into its
    strong view and the strong view's own map, over valid pixels (a blank map counts 0).
    ``blank_maps``: the share of images whose map is all zero (ReLU of a non-positive
    weighted sum) — a consistency loss can be lowered by such maps, so watch it.
    The views come from a generator seeded with ``seed``, so calling this every epoch on
    the same images measures how the model's maps change, not the augmentation's.
    """
    a = aligned_cams(model, x, augmenter, layer, torch.Generator().manual_seed(seed))
    blank = a.map_original.flatten(1).amax(1) <= 0
    return {
        "map_agreement": float(pearson(a.map_carried, a.map_strong, a.valid).mean()),
        "blank_maps": float(blank.float().mean()),
    }


@dataclass
class CaamCam:
    """A batch's CAM of the predicted class and CAAM at the model's ``cam_layer`` (eval mode, detached)."""

    original: View
    probs: Tensor  # B×C softmax
    classes: Tensor  # B predicted classes ŷ
    cam: Tensor  # B×h×w CAM of ŷ (no ReLU)
    caam: Tensor  # B×h×w class-agnostic map (sum over channels)


def caam_cam(model: nn.Module, x: Tensor, augmenter: Augmenter) -> CaamCam:
    """CAM_ŷ and CAAM of ``x`` (uint8) from one eval-mode forward with a tap of ``model.cam_layer``."""
    layer = cam_layer(model)
    was_training = model.training
    model.eval()
    try:
        original = augmenter.original(x)
        with torch.no_grad():
            logits, feats = model(original.images, taps=[layer])
            probs = torch.softmax(logits.float(), 1)
            classes = probs.argmax(1)
            return CaamCam(original, probs, classes, cam(feats[layer], fc_weight(model), classes), caam(feats[layer]))
    finally:
        model.train(was_training)


def caam_diagnostics(model: nn.Module, x: Tensor, augmenter: Augmenter) -> dict[str, float]:
    """How the class-agnostic map follows the class map (CAM-loss's aim), on ``x`` in eval mode.

    ``caam_cam_agreement``: mean Pearson correlation of N(CAAM) and N(CAM_ŷ) (per-sample
    min–max, ŷ the prediction) over the map's pixels; 0 for a constant map.
    ``caam_outside_share``: the share of the CAAM's (non-negative) activation mass that lies
    outside the top quarter of CAM_ŷ's pixels; 0.75 for a flat CAAM, lower means features
    off the class evidence are suppressed (*camssl's* measure; images whose CAAM has no
    positive mass are left out).
    """
    m = caam_cam(model, x, augmenter)
    a, c = normalize_maps(m.caam, "minmax"), normalize_maps(m.cam, "minmax")
    agree = pearson(a, c, torch.ones_like(a))
    flat_cam, mass = m.cam.flatten(1), m.caam.flatten(1).clamp_min(0)
    k = max(1, -(-flat_cam.shape[1] // 4))
    top = torch.zeros_like(mass).scatter_(1, flat_cam.topk(k, dim=1).indices, 1.0)
    total = mass.sum(1)
    has = total > 0
    outside = 1 - (mass * top).sum(1)[has] / total[has]
    return {
        "caam_cam_agreement": float(agree.mean()),
        "caam_outside_share": float(outside.mean()) if bool(has.any()) else 0.0,
    }


def caam_grid_figure(m: CaamCam, augmenter: Augmenter, class_names: list[str], labels: Tensor | None, title: str = ""):  # type: ignore[no-untyped-def]
    """One row per image: image | CAM of the prediction | CAAM | |N(CAAM) - N(CAM)| (min–max, at image size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = tuple(m.original.images.shape[-2:])
    imgs = augmenter.denormalize(m.original.images).permute(0, 2, 3, 1).cpu().numpy()
    cam_n = normalize_maps(upsample_maps(m.cam, size), "minmax")
    caam_n = normalize_maps(upsample_maps(m.caam, size), "minmax")
    cols = [("image", None), ("CAM(pred)", cam_n), ("CAAM", caam_n), ("|CAAM - CAM|", (caam_n - cam_n).abs())]
    n = m.classes.shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.7 * n), squeeze=False)
    for i in range(n):
        for j, (name, maps) in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if maps is None:
                ax.imshow(imgs[i], interpolation="nearest")
                true = class_names[int(labels[i])] if labels is not None and int(labels[i]) >= 0 else "?"
                ax.set_ylabel(f"pred {class_names[int(m.classes[i])]}\ntrue {true}", fontsize=7)
            else:
                ax.imshow(imgs[i].mean(-1), cmap="gray", interpolation="nearest")
                ax.imshow(maps[i].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            if i == 0:
                ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def cam_grid_figure(a: AlignedCams, augmenter: Augmenter, class_names: list[str], labels: Tensor | None, title: str = ""):  # type: ignore[no-untyped-def]
    """A matplotlib figure in the spirit of the paper's Fig. 2, one row per image.

    Columns: image | strong view | Grad-CAM of the image | Grad-CAM of the strong view |
    the image's map carried into the strong view (the L_G target) | |difference| there.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = a.classes.shape[0]
    imgs = augmenter.denormalize(a.original.images).permute(0, 2, 3, 1).cpu().numpy()
    views = augmenter.denormalize(a.strong.images).permute(0, 2, 3, 1).cpu().numpy()

    def norm(m: Tensor) -> Tensor:
        return m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]

    carried = norm(a.map_carried * a.valid)
    strong = norm(a.map_strong)
    diff = (strong - carried).abs() * a.valid
    cols = [
        ("image", None),
        ("strong view", None),
        ("Grad-CAM(image)", norm(a.map_original)),
        ("Grad-CAM(view)", strong),
        ("image map → view", carried),
        ("|difference|", diff),
    ]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.7 * n), squeeze=False)
    for i in range(n):
        pred = class_names[int(a.classes[i])]
        true = class_names[int(labels[i])] if labels is not None and int(labels[i]) >= 0 else "?"
        for j, (name, maps) in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.imshow(imgs[i], interpolation="nearest")
                ax.set_ylabel(f"pred {pred}\ntrue {true}", fontsize=7)
            elif j == 1:
                ax.imshow(views[i], interpolation="nearest")
            else:
                base = views[i] if j >= 3 else imgs[i]
                ax.imshow(base.mean(-1), cmap="gray", interpolation="nearest")
                ax.imshow(maps[i].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            if i == 0:
                ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:  # type: ignore[no-untyped-def]
    """A matplotlib figure as PNG bytes (110 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Write a matplotlib figure as PNG atomically, then close it."""
    io.write_bytes(Path(path), figure_png(fig))
