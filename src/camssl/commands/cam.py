"""``camssl cam RUN_DIR``: a Grad-CAM (or CAM/CAAM) grid of a trained run, like the paper's Fig. 2."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from camssl.augment import Augmenter
from camssl.data import load_data
from camssl.data.images import IMAGE_EXTENSIONS, decode_image, stack_hwc
from camssl.errors import DataError, UserError
from camssl.train.checkpoint import load_run_model
from camssl.viz import (aligned_cams, caam_cam, caam_diagnostics, caam_grid_figure, cam_grid_figure, pearson,
                        save_figure)


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cam", parents=parents, help="draw a Grad-CAM grid of a trained run (like the paper's Fig. 2)")
    p.add_argument("run_dir", help="a training run directory")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which weights [best]")
    p.add_argument("--images", default=None, help="a folder of images [default: random images of the test split]")
    p.add_argument("--n", type=int, default=8, help="number of images [8]")
    p.add_argument("--layer", default=None, help="target layer: a module path, or auto (the last spatial stage) "
                                                 "[the run's diagnostic layer: its first map layer, else layer3]")
    p.add_argument("--out", default=None, help="PNG path [RUN_DIR/figures/cam_<checkpoint>_<layer>.png]")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the strong views [0]")
    p.add_argument("--maps", choices=["gradcam", "caam"], default="gradcam",
                   help="gradcam: aligned Grad-CAM grid; caam: image / CAM / CAAM at the last stage [gradcam]")
    p.set_defaults(func=cmd_cam)


def cmd_cam(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UserError(f"--n {args.n} is invalid: give at least 1 image")
    out = render_run(args.run_dir, checkpoint=args.checkpoint, images=args.images, n=args.n, layer=args.layer,
                     out=args.out, seed=args.seed, maps=args.maps)
    print(f"wrote {out}")
    return 0


def folder_images(folder: Path, size: int, classes: list[str], n: int) -> tuple[Tensor, Tensor]:
    """Up to ``n`` images from a folder (recursively); a parent folder named like a class gives the label."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder '{folder}' does not exist; pass --images with a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"no images (.jpg/.png/.bmp/.webp) in '{folder}'")
    files = files[:n]
    arrays = [decode_image(p, size) for p in files]
    labels = torch.tensor([classes.index(p.parent.name) if p.parent.name in classes else -1 for p in files])
    return stack_hwc(np.stack(arrays)), labels


def render_run(
    run_dir: Path,
    *,
    checkpoint: str = "best",
    images: Path | None = None,
    n: int = 8,
    layer: str | None = None,
    out: Path | None = None,
    seed: int = 0,
    maps: str = "gradcam",
) -> Path:
    """``camssl cam``: a CAM grid of a trained run, written as PNG; returns its path.

    ``maps="gradcam"``: the aligned Grad-CAM grid of :func:`cam_grid_figure` at ``layer``;
    ``"caam"``: image / CAM / CAAM columns at the model's last stage (:func:`caam_grid_figure`).
    """
    model, cfg, classes = load_run_model(run_dir, checkpoint)
    if maps == "caam" and layer is not None and layer != model.cam_layer:
        raise UserError(f"--maps caam draws CAM and CAAM at the last stage ({model.cam_layer}); drop --layer {layer}")
    if layer == "auto":
        from camssl.cam import auto_layer

        layer = auto_layer(model, (cfg.data.image_size, cfg.data.image_size))
    layer = (model.cam_layer if maps == "caam" else None) or layer or cfg.diagnostic_layer()
    model.check_layer(layer)
    if images is not None:
        x, y = folder_images(Path(images), cfg.data.image_size, classes, n)
    else:
        bundle = load_data(cfg.data, seed=cfg.split.seed)
        classes = bundle.test.classes
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(bundle.test), generator=g)[:n]
        x, y = bundle.test.images[idx], bundle.test.labels[idx]
    augmenter = Augmenter(cfg.augment)
    if maps == "caam":
        m = caam_cam(model, x, augmenter)
        agree = caam_diagnostics(model, x, augmenter)["caam_cam_agreement"]
        fig = caam_grid_figure(m, augmenter, classes, y,
                               f"{cfg.method.name} ({checkpoint}.pt), CAM / CAAM at {layer}, agreement {agree:.2f}")
        out = Path(out) if out else Path(run_dir) / "figures" / f"caam_{checkpoint}.png"
        save_figure(fig, out)
        return out
    aligned = aligned_cams(model, x, augmenter, layer, torch.Generator().manual_seed(seed))
    agree = float(pearson(aligned.map_carried, aligned.map_strong, aligned.valid).mean())
    fig = cam_grid_figure(
        aligned, augmenter, classes, y, f"{cfg.method.name} ({checkpoint}.pt), Grad-CAM at {layer}, agreement {agree:.2f}"
    )
    out = Path(out) if out else Path(run_dir) / "figures" / f"cam_{checkpoint}_{layer}.png"
    save_figure(fig, out)
    return out
