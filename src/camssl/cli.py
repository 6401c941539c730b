"""The ``camssl`` command.

    camssl train [--config demo|cpu|paper|FILE] [shortcuts] [section.key=value ...]
    camssl train --resume RUN_DIR
    torchrun --nproc-per-node N -m camssl train ...          N processes (GPUs), same global batch
    camssl config [--config ...] [section.key=value ...]     print the resolved config
    camssl cam RUN_DIR [--images DIR] [--layer L] [--maps caam]  Grad-CAM (or CAM/CAAM) grid of a trained run
    camssl sweep SPEC --out DIR [--jobs N]                     a grid of runs (resumable)
    camssl sweep SPEC --out DIR --launcher slurm [...]         ... as a Slurm job array (submitit)
    camssl sweep DIR --status                                  each run's state
    camssl table SWEEP_DIR                                     tables, paired CIs, figure
    camssl active --data DIR --strategy revival --out DIR      active learning (REVIVAL, random, entropy, coreset)
    camssl active --out DIR --resume                           ... continued (after a kill, or labels filled in)
    camssl active-table DIR... --out DIR                       accuracy-vs-labels curves, paired CIs vs random
    camssl bench [--quick]                                     step cost per method (docs/benchmarks.md)
    camssl download cifar10 DIR

Errors a user can cause are printed as one line (``error: ...``) with exit status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from camssl.errors import UserError

# command-line shortcuts: flag -> (config key(s), type)
SHORTCUTS: dict[str, tuple[tuple[str, ...], type, str]] = {
    "--data": (("data.source",), str, "training data: 'mini', a CIFAR-10 folder/archive or an image folder"),
    "--test-data": (("data.test_source",), str, "separate test image folder (optional)"),
    "--method": (("method.name",), str, "supervised | pseudo_label | gradcam | cam_loss | cam_kd | ..."),
    "--layer": (("method.layers",), str, "Grad-CAM target layer(s), comma-separated"),
    "--ratio": (("split.ratio",), float, "unlabeled/labeled ratio (0 = supervised only)"),
    "--labeled": (("split.n_labeled",), int, "number of labeled images (class-balanced)"),
    "--model": (("model.name",), str, "backbone"),
    "--width": (("model.width",), float, "channel-width multiplier"),
    "--epochs": (("optim.epochs",), int, "training epochs"),
    "--lr": (("optim.lr",), float, "peak learning rate"),
    "--batch-size": (("optim.batch_size",), int, "labeled images per step (global)"),
    "--seed": (("seed", "split.seed"), int, "seed of the run and of the split"),
    "--device": (("device",), str, "auto | cpu | cuda | cuda:N"),
    "--teacher": (("method.teacher",), str, "frozen teacher of cam_kd: a trained run directory or its .pt file"),
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="demo", help="preset name (demo, cpu, paper) or a YAML file [demo]")
    for flag, (keys, typ, text) in SHORTCUTS.items():
        p.add_argument(flag, type=typ, default=None, help=f"{text} (sets {', '.join(keys)})")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of failing")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="any config field, e.g. optim.lr=0.05")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``section.key=value`` overrides and the shortcut flags (``--data`` ...) as one {key: value} dict."""
    from camssl.config import parse_override

    overrides: dict[str, Any] = dict(parse_override(o) for o in args.overrides)
    for flag, (keys, _, _) in SHORTCUTS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            for k in keys:
                overrides[k] = value
    if args.skip_bad:
        overrides["data.skip_bad"] = True
    if args.teacher is not None:
        _check_teacher_flag(args.config, overrides)
    return overrides


def _config_from_args(args: argparse.Namespace) -> Any:
    from camssl.config import load_config

    return load_config(args.config, overrides_from_args(args))


def _check_teacher_flag(preset: str, overrides: dict[str, Any]) -> None:
    """``--teacher`` with a method that has no teacher: one line naming the methods that have one."""
    import dataclasses

    from camssl.config import load_yaml_tree, method_config_class
    from camssl.methods import METHODS

    section = load_yaml_tree(preset).get("method") or {}
    name = overrides.get("method.name", section.get("name", "supervised") if isinstance(section, dict) else None)
    if "teacher" not in {f.name for f in dataclasses.fields(method_config_class(name))}:
        users = sorted(n for n, m in METHODS.items() if "teacher" in {f.name for f in dataclasses.fields(m.Config)})
        raise UserError(f"--teacher is used only by {', '.join(users)}; method {name} has no teacher "
                        f"(add --method {users[0]} or drop --teacher)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camssl", description="Semi-supervised image classification guided by class activation maps."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", parents=[common], help="train a model (default: the demo preset on the embedded mini CIFAR-10)")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="run directory [runs/<time>-<method>-s<seed>]")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue a killed or unfinished run")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")

    p = sub.add_parser("config", parents=[common], help="print the resolved config as YAML")
    _add_config_args(p)

    p = sub.add_parser("cam", parents=[common], help="draw a Grad-CAM grid of a trained run (like the paper's Fig. 2)")
    p.add_argument("run_dir", help="a training run directory")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which weights [best]")
    p.add_argument("--images", default=None, help="a folder of images [default: random images of the test split]")
    p.add_argument("--n", type=int, default=8, help="number of images [8]")
    p.add_argument("--layer", default=None, help="target layer [the run's diagnostic layer: its first map layer, else layer3]")
    p.add_argument("--out", default=None, help="PNG path [RUN_DIR/figures/cam_<checkpoint>_<layer>.png]")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the strong views [0]")
    p.add_argument("--maps", choices=["gradcam", "caam"], default="gradcam",
                   help="gradcam: aligned Grad-CAM grid; caam: image / CAM / CAAM at the last stage [gradcam]")

    from camssl.experiments import add_sweep_arguments, add_table_arguments

    p = sub.add_parser("sweep", parents=[common], help="run a grid of training runs (resumable; Table I of the paper)")
    add_sweep_arguments(p)
    p = sub.add_parser("table", parents=[common], help="Table I/II, paired CIs and Figure 3 of a sweep")
    add_table_arguments(p)

    from camssl.active.cli import add_active_arguments, add_active_table_arguments

    p = sub.add_parser("active", parents=[common], help="active learning: train, query the pool, label, retrain (REVIVAL)")
    add_active_arguments(p)
    p = sub.add_parser("active-table", parents=[common], help="accuracy-vs-labels curves of active-learning runs")
    add_active_table_arguments(p)

    from camssl.bench import add_bench_arguments

    p = sub.add_parser("bench", parents=[common], help="training-step cost per method and layer (docs/benchmarks.md)")
    add_bench_arguments(p)

    p = sub.add_parser("download", parents=[common], help="download a data set (needs internet)")
    p.add_argument("dataset", choices=["cifar10"])
    p.add_argument("dir", help="destination folder")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from camssl.train import train

    if args.resume:
        given = [o for o in args.overrides] + [f for f in SHORTCUTS if getattr(args, f.lstrip("-").replace("-", "_"))]
        if given or args.out or args.overwrite:
            raise UserError(
                f"--resume continues a run with its saved config; drop {', '.join(given) or '--out/--overwrite'} "
                "(or start a new run with --out)"
            )
        train(None, args.resume, resume=True)
        return 0
    cfg = _config_from_args(args)
    train(cfg, args.out, overwrite=args.overwrite)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from camssl.config import dump_yaml

    print(dump_yaml(_config_from_args(args)), end="")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from camssl.data import download_cifar10

    path = download_cifar10(args.dir)
    print(f"CIFAR-10 archive ready: {path}  (train with: camssl train --config cpu --data {path})")
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    from camssl.viz import render_run

    if args.n < 1:
        raise UserError(f"--n {args.n} is invalid: give at least 1 image")
    out = render_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        images=args.images,
        n=args.n,
        layer=args.layer,
        out=args.out,
        seed=args.seed,
        maps=args.maps,
    )
    print(f"wrote {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from camssl.experiments import cmd_sweep as run

    return run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from camssl.bench import cmd_bench as run

    return run(args)


def cmd_table(args: argparse.Namespace) -> int:
    from camssl.experiments import cmd_table as run

    return run(args)


def cmd_active(args: argparse.Namespace) -> int:
    from camssl.active.cli import cmd_active as run

    return run(args)


def cmd_active_table(args: argparse.Namespace) -> int:
    from camssl.active.cli import cmd_active_table as run

    return run(args)


COMMANDS = {
    "train": cmd_train,
    "active": cmd_active,
    "active-table": cmd_active_table,
    "config": cmd_config,
    "cam": cmd_cam,
    "sweep": cmd_sweep,
    "table": cmd_table,
    "bench": cmd_bench,
    "download": cmd_download,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes the section.key=value overrides in one run; accept them between flags too
    # (camssl train optim.lr=0.05 --epochs 3 seed=1)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        from camssl.distributed import is_main_process

        if is_main_process():  # under torchrun every rank meets the same error; rank 0 reports it
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = f"camssl active --out {args.out} --resume" if args.command == "active" else "camssl train --resume RUN_DIR"
        print(f"interrupted; continue with: {again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
