"""``camssl export RUN_DIR|CHECKPOINT --format onnx --out model.onnx [--check]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from camssl.errors import UserError


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", parents=parents, help="export a trained model to ONNX (with its classes and "
                                                        "preprocessing in the metadata)")
    p.add_argument("model", help="a training run directory (its best.pt) or a checkpoint file")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the file format [onnx]")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which weights of a run [best]")
    p.add_argument("--check", action="store_true",
                   help="compare ONNX Runtime with PyTorch on real images (--images, else the run's test images)")
    p.add_argument("--images", default=None, help="folder or files of images for --check")
    p.add_argument("--n", type=int, default=256, help="images for --check [256]")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)


def _check_images(args: argparse.Namespace, saved: object):  # type: ignore[no-untyped-def]
    """uint8 images for --check: --images, else the run's test set (its config.yaml's data)."""
    import numpy as np

    from camssl.data.images import decode_image, stack_hwc

    size = int(saved.preprocess["image_size"][0])  # type: ignore[attr-defined]
    if args.images:
        from camssl.inference import collect_inputs

        paths = collect_inputs([args.images])[: args.n]
        return stack_hwc(np.stack([decode_image(p, size) for p in paths]))
    run_dir = Path(saved.path).parent  # type: ignore[attr-defined]
    if not (run_dir / "config.yaml").exists():
        raise UserError("--check needs images: give --images DIR (the checkpoint has no run directory beside it)")
    from camssl.data import load_data
    from camssl.train.rundir import read_run_config

    cfg = read_run_config(run_dir)
    return load_data(cfg.data, seed=cfg.split.seed).test.images[: args.n]


def cmd_export(args: argparse.Namespace) -> int:
    from camssl.export import CHECK_TOLERANCE, check_onnx, export_onnx
    from camssl.models.saved import load_model

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"'{out}' already exists; pass --force to replace it, or choose another --out")
    if not out.parent.exists():
        raise UserError(f"the folder of --out '{out}' does not exist; create it first")
    saved = load_model(args.model, args.checkpoint)
    images = _check_images(args, saved) if args.check else None  # a missing data set fails before the export
    export_onnx(saved, out)
    print(f"wrote {out} ({len(saved.classes)} classes, input images N×3×{saved.preprocess['image_size'][0]}×"
          f"{saved.preprocess['image_size'][1]}, normalised with the mean and std in its metadata)")
    if images is not None:
        s = check_onnx(out, saved, images)
        print(f"check: ONNX Runtime = PyTorch on {int(s['images'])} images: top-1 agreement {s['top1_agreement']:.0%}, "
              f"max probability difference {s['max_prob_diff']:.1e} (tolerance {CHECK_TOLERANCE:.0e}), "
              f"max logit difference {s['max_logit_diff']:.1e}")
    return 0
