"""``camssl predict RUN_DIR|CHECKPOINT INPUT... --out FILE``: classify new images with a trained model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from camssl.errors import UserError


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predict", parents=parents, help="classify images with a trained run (CSV or JSON)")
    p.add_argument("model", help="a training run directory (its best.pt) or a checkpoint file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or .csv/.txt lists")
    p.add_argument("--out", required=True, help="the table to write: .csv or .json")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which weights of a run [best]")
    p.add_argument("--topk", type=int, default=1, help="classes per image, most likely first [1]")
    p.add_argument("--cam", default=None, metavar="DIR", help="also write a Grad-CAM overlay PNG per image into DIR")
    p.add_argument("--layer", default=None,
                   help="layer of --cam: a module path, or auto (the last spatial stage) [the run's map layer]")
    p.add_argument("--tta", type=int, choices=[0, 1, 2], default=0,
                   help="test-time augmentation: 0 none, 1 mirror, 2 mirror + 1-px translate [0]")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward [256]")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N [cpu]")
    p.add_argument("--skip-bad", action="store_true",
                   help="an unreadable image gets a row with an error instead of stopping the run")
    p.add_argument("--force", action="store_true", help="replace --out (and files in --cam) if they exist")
    p.set_defaults(func=cmd_predict)


def _map_layer(args: argparse.Namespace, predictor: object) -> str:
    """--layer, else the run's diagnostic layer (its config.yaml), else the model's last spatial stage."""
    from camssl.cam import auto_layer

    model = predictor.model  # type: ignore[attr-defined]
    if args.layer and args.layer != "auto":
        try:
            model.get_submodule(args.layer)
        except AttributeError:
            raise UserError(f"--layer {args.layer!r} is not a module of the model; give a module path such as "
                            "layer3, or --layer auto") from None
        return args.layer
    run_config = Path(predictor.saved.path).parent / "config.yaml"  # type: ignore[attr-defined]
    if args.layer is None and run_config.exists():
        from camssl.train.rundir import read_run_config

        return read_run_config(run_config.parent).diagnostic_layer()
    return auto_layer(model, tuple(predictor.saved.preprocess["image_size"]))  # type: ignore[attr-defined]


def cmd_predict(args: argparse.Namespace) -> int:
    from camssl.inference import Predictor, cam_overlays, check_output, collect_inputs, write_table
    from camssl.train import pick_device

    if args.topk < 1 or args.batch_size < 1:
        raise UserError("--topk and --batch-size must be at least 1")
    out = Path(args.out)
    check_output(out, args.force)  # before any work
    cam_dir = Path(args.cam) if args.cam else None
    if cam_dir is not None and cam_dir.is_dir() and any(cam_dir.iterdir()) and not args.force:
        raise UserError(f"--cam folder '{cam_dir}' is not empty; pass --force to write into it, or choose another")
    paths = collect_inputs(args.inputs)
    predictor = Predictor.load(args.model, args.checkpoint, device=pick_device(args.device, "--device "),
                               tta=args.tta, batch_size=args.batch_size)
    layer = _map_layer(args, predictor) if cam_dir is not None else None
    rows, used, t0 = [], set(), time.time()
    bar = _bar(len(paths))
    for ok, images, bad in predictor.batches(paths, args.skip_bad):
        probs = predictor.probabilities(images)
        rows += predictor.rows(ok, probs, args.topk) + bad
        if cam_dir is not None and ok:
            cam_overlays(predictor, ok, images, probs.argmax(1), layer, cam_dir, used)  # type: ignore[arg-type]
        if bar is not None:
            bar.update(len(ok) + len(bad))
    if bar is not None:
        bar.close()
    seconds = time.time() - t0
    order = {str(p): i for i, p in enumerate(paths)}
    rows.sort(key=lambda r: order.get(r.file, 0))
    write_table(rows, out, args.topk, args.skip_bad, args.force)
    n_bad = sum(1 for r in rows if r.error)
    print(f"wrote {out}: {len(rows)} images ({n_bad} unreadable) in {seconds:.1f}s, "
          f"{(len(rows) - n_bad) / max(seconds, 1e-9):.0f} images/s on {predictor.device} "
          f"({torch.get_num_threads()} threads)" + (f"; Grad-CAM at {layer} in {cam_dir}" if cam_dir else ""))
    return 0


def _bar(total: int):  # type: ignore[no-untyped-def]
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="img", leave=False)
