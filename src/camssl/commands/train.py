"""``camssl train`` (a run, or ``--resume`` one) and ``camssl config`` (print the resolved config)."""

from __future__ import annotations

import argparse

from camssl.commands.common import add_config_args, config_from_args, shortcut_values
from camssl.errors import UserError


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", parents=parents,
                       help="train a model (default: the demo preset on the embedded mini CIFAR-10)")
    add_config_args(p)
    p.add_argument("--out", default=None, help="run directory [runs/<time>-<method>-s<seed>]")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue a killed or unfinished run")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.set_defaults(func=cmd_train, resume_hint="camssl train --resume RUN_DIR")

    p = sub.add_parser("config", parents=parents, help="print the resolved config as YAML")
    add_config_args(p)
    p.set_defaults(func=cmd_config)


def cmd_train(args: argparse.Namespace) -> int:
    from camssl.train import train

    if args.resume:
        given = list(args.overrides) + list(shortcut_values(args))
        if given or args.out or args.overwrite:
            raise UserError(
                f"--resume continues a run with its saved config; drop {', '.join(given) or '--out/--overwrite'} "
                "(or start a new run with --out)"
            )
        train(None, args.resume, resume=True)
        return 0
    train(config_from_args(args), args.out, overwrite=args.overwrite)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from camssl.config import dump_yaml

    print(dump_yaml(config_from_args(args)), end="")
    return 0
