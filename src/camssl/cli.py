"""The ``camssl`` command.

    camssl train [--config demo|cpu|fast|paper|FILE] [shortcuts] [section.key=value ...]
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
    camssl active --out DIR --resume --labels EXPORT           ... with the labels of a Label Studio export
    camssl active-export DIR --format labelstudio              a run's pending query as Label Studio tasks
    camssl active-table DIR... --out DIR                       accuracy-vs-labels curves, paired CIs vs random
    camssl bench [--quick]                                     step cost per method (docs/benchmarks.md)
    camssl download cifar10 DIR

Each subcommand registers itself (:mod:`camssl.commands`). Errors a user can cause are
printed as one line (``error: ...``) with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from camssl.commands import MODULES
from camssl.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camssl", description="Semi-supervised image classification guided by class activation maps."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in MODULES:
        importlib.import_module(module).add_parser(sub, [common])
    return parser


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
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        from camssl.distributed import is_main_process

        if is_main_process():  # under torchrun every rank meets the same error; rank 0 reports it
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        again = f"; continue with: {hint.format(out=getattr(args, 'out', None))}" if hint else ""
        print(f"interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
