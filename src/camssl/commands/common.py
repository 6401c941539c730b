"""Arguments several ``camssl`` subcommands share: the config preset, the shortcut flags and ``section.key=value``."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from camssl.errors import UserError

# command-line shortcuts: flag -> (config key(s), type, help)
SHORTCUTS: dict[str, tuple[tuple[str, ...], type, str]] = {
    "--data": (("data.source",), str, "training data: 'mini', a CIFAR-10 folder/archive or an image folder"),
    "--test-data": (("data.test_source",), str, "separate test image folder (optional)"),
    "--method": (("method.name",), str, "the method (see below)"),
    "--layer": (("method.gradcam.layers",), str, "Grad-CAM target layer(s) of L_G, comma-separated"),
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


def methods_help() -> str:
    """The registered methods, one per line, from the registry (the CLI help's epilog)."""
    from camssl.methods import METHODS

    width = max(map(len, METHODS))
    return "methods (--method):\n" + "\n".join(f"  {n:<{width}}  {METHODS[n].summary}" for n in sorted(METHODS))


def add_config_args(p: argparse.ArgumentParser, config_help: str | None = None) -> None:
    """``--config``, the shortcut flags, ``--skip-bad`` and the ``section.key=value`` overrides."""
    from camssl.methods import METHODS

    p.add_argument("--config", default="demo",
                   help=config_help or "preset name (demo, cpu, fast, paper) or a YAML file [demo]")
    for flag, (keys, typ, text) in SHORTCUTS.items():
        if flag == "--method":
            text = f"one of: {', '.join(sorted(METHODS))}"
        p.add_argument(flag, type=typ, default=None, help=f"{text} (sets {', '.join(keys)})")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of failing")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="any config field, e.g. optim.lr=0.05")
    p.epilog = methods_help()
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def shortcut_values(args: argparse.Namespace) -> dict[str, Any]:
    """{flag: value} of the shortcut flags given on the command line."""
    values = {flag: getattr(args, flag.lstrip("-").replace("-", "_")) for flag in SHORTCUTS}
    return {flag: v for flag, v in values.items() if v is not None}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``section.key=value`` overrides and the shortcut flags (``--data`` ...) as one {key: value} dict."""
    from camssl.config import parse_override

    overrides: dict[str, Any] = dict(parse_override(o) for o in args.overrides)
    for flag, value in shortcut_values(args).items():
        for k in SHORTCUTS[flag][0]:
            overrides[k] = value
    if args.skip_bad:
        overrides["data.skip_bad"] = True
    if args.teacher is not None:
        _check_teacher_flag(args.config, overrides)
    return overrides


def config_from_args(args: argparse.Namespace) -> Any:
    from camssl.config import load_config

    return load_config(args.config, overrides_from_args(args))


def _check_teacher_flag(preset: str | None, overrides: dict[str, Any]) -> None:
    """``--teacher`` with a method that has no teacher: one line naming the methods that have one."""
    from camssl.config import load_yaml_tree, method_config_class
    from camssl.methods import METHODS

    section = load_yaml_tree(preset or "demo").get("method") or {}
    name = overrides.get("method.name", section.get("name", "supervised") if isinstance(section, dict) else None)
    if "teacher" not in {f.name for f in dataclasses.fields(method_config_class(name))}:
        users = sorted(n for n, m in METHODS.items() if "teacher" in {f.name for f in dataclasses.fields(m.Config)})
        raise UserError(f"--teacher is used only by {', '.join(users)}; method {name} has no teacher "
                        f"(add --method {users[0]} or drop --teacher)")
