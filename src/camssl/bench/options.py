"""Benchmark options: defaults, the command-line flags and their validation."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camssl.errors import UserError

DEFAULT_OUT = "docs/benchmarks.md"
LAYERS = ("layer1", "layer2", "layer3", "layer4")
MODES = ("full", "detach-weights")
MODEL = "resnet18"
NUM_CLASSES = 10
IMAGE_SIZE = 32

# targets of issue 5 (CPU, ResNet-18 at the cpu preset's width, ratios of medians of one run)
TARGET_STEP_RATIO = {"layer4": 1.03, "layer3": 1.15, "layer2": 1.30, "layer1": 1.50}
TARGET_REFERENCE = 2.0
TARGET_VIEW_SHARE = 0.05
TARGET_MEMORY = 1.5
TARGET_LGA = 1.15  # issue 13: an lga step (classifier scope) ≤ 1.15 × a pseudo_label step

E2E_BEGIN = "<!-- end-to-end:begin (kept when the file is regenerated) -->"
E2E_END = "<!-- end-to-end:end -->"
E2E_PLACEHOLDER = """\
**To be filled from real runs (not produced by `camssl bench`).** Seconds per epoch and
images per second of the `cpu` preset on the shared CIFAR-10 JPEG data, e.g.
`camssl train --config cpu --data DATA --method METHOD [--layer layer3]`, read from the
run's `metrics.jsonl` / `result.json`:

| method | seconds / epoch | images / s | steps / epoch | run |
|---|---|---|---|---|
| supervised | _TBD_ | _TBD_ | | |
| pseudo_label | _TBD_ | _TBD_ | | |
| gradcam @ layer3 | _TBD_ | _TBD_ | | |
"""





@dataclass
class BenchOptions:
    """Everything one benchmark run needs (built from the command line by :func:`options_from_args`)."""

    widths: list[float] = field(default_factory=lambda: [0.5, 1.0])
    batch: int = 64
    unlabeled: int = 64
    reps: int = 10
    warmup: int = 2
    layers: list[str] = field(default_factory=lambda: list(LAYERS))
    modes: list[str] = field(default_factory=lambda: list(MODES))
    reference: bool = True
    methods: bool = True  # vat, lga (both scopes), lga + VAT and cam_loss beside pseudo_label
    memory: bool = True
    experiments: bool = True
    precision: bool = True  # fp32 vs bf16 autocast per method on the fast preset's model (CPU)
    compile: bool = True
    exp_reps: int = 6
    threads: int = 0  # 0 = auto (measure, keep the faster)
    profile_reps: int = 3  # profiled steps per step type at the target width (median phases)
    channels_last: str = "auto"  # auto | on | off
    device: str = "auto"
    seed: int = 0
    out: str = DEFAULT_OUT
    quick: bool = False
    command: str = "camssl bench"
    log: Callable[[str], None] = print


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``camssl bench`` options to ``p`` (a subparser); run them with :func:`cmd_bench`."""
    p.add_argument("--widths", default=None,
                   help="ResNet-18 channel widths, comma-separated; the first that equals the cpu preset's "
                        "width is the one the targets are checked at [0.5,1.0]")
    p.add_argument("--batch", type=int, default=None, help="labeled images per step [64]")
    p.add_argument("--unlabeled", type=int, default=None, help="unlabeled images per step [same as --batch]")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions of every step type, interleaved [10]")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps of every step type [2]")
    p.add_argument("--layers", default=None, help=f"Grad-CAM target layers, comma-separated [{','.join(LAYERS)}]")
    p.add_argument("--modes", default=None, help=f"Grad-CAM gradient modes, comma-separated [{','.join(MODES)}]")
    p.add_argument("--no-reference", dest="reference", action="store_false", default=True,
                   help="skip the captum LayerGradCam reference implementation")
    p.add_argument("--no-methods", dest="methods", action="store_false", default=True,
                   help="skip the other methods' steps (vat, lga both scopes, lga + VAT, cam_loss)")
    p.add_argument("--no-memory", dest="memory", action="store_false", default=True,
                   help="skip the peak-memory and profile step")
    p.add_argument("--no-experiments", dest="experiments", action="store_false", default=True,
                   help="skip 'what we tried' (memory layout, threads, torch.compile)")
    p.add_argument("--no-precision", dest="precision", action="store_false", default=True,
                   help="skip fp32 vs bf16 autocast per method on the fast preset's model (CPU only)")
    p.add_argument("--no-compile", dest="compile", action="store_false", default=True,
                   help="skip the torch.compile experiment (it compiles for minutes on a small CPU)")
    p.add_argument("--exp-reps", type=int, default=None, help="repetitions of each experiment [6]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads on CPU; 0 = auto: time 1 thread against torch's default first "
                        "(interleaved) and keep the faster [0]")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default=None,
                   help="memory format of the main tables: auto = contiguous on CPU, channels_last on CUDA [auto]")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--seed", type=int, default=None, help="seed of the weights, the batch and the views [0]")
    p.add_argument("--out", default=None, help=f"markdown file to write [{DEFAULT_OUT}]")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: width 0.125, batch 4, 2 reps, 1 warm-up, 1 profiled step, layer3 only, no torch.compile "
                        "(explicit options still win)")


def options_from_args(args: argparse.Namespace, command: str | None = None) -> BenchOptions:
    """Resolve the command-line options (with ``--quick`` defaults) and validate them."""
    quick = bool(getattr(args, "quick", False))
    o = BenchOptions(quick=quick)
    if quick:
        o.widths, o.batch, o.reps, o.warmup, o.layers, o.exp_reps, o.compile = [0.125], 4, 2, 1, ["layer3"], 2, False
        o.profile_reps = 1  # the torch profiler's event parsing is most of a smoke run's time

    def given(name: str) -> Any:
        return getattr(args, name, None)

    if given("widths") is not None:
        o.widths = _parse_list("--widths", args.widths, float)
    if given("batch") is not None:
        o.batch = args.batch
    o.unlabeled = args.unlabeled if given("unlabeled") is not None else o.batch
    for name in ("reps", "warmup", "exp_reps", "threads", "seed"):
        if given(name) is not None:
            setattr(o, name, getattr(args, name))
    if given("layers") is not None:
        o.layers = _parse_list("--layers", args.layers, str)
    if given("modes") is not None:
        o.modes = _parse_list("--modes", args.modes, str)
    for name in ("reference", "methods", "memory", "experiments", "precision"):
        setattr(o, name, getattr(args, name, getattr(o, name)))
    o.compile = o.compile and getattr(args, "compile", True)
    if given("channels_last") is not None:
        o.channels_last = args.channels_last
    if given("device") is not None:
        o.device = args.device
    if given("out") is not None:
        o.out = args.out
    o.command = command or _command_line()
    validate_options(o)
    return o


def validate_options(o: BenchOptions) -> None:
    if not o.widths or any(not math.isfinite(w) or w <= 0 for w in o.widths):
        raise UserError(f"--widths {o.widths} is invalid: give positive numbers, e.g. --widths 0.5,1.0")
    for name in ("batch", "unlabeled", "reps", "exp_reps"):
        if getattr(o, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(o, name)} is invalid: give at least 1")
    for name in ("warmup", "threads"):
        if getattr(o, name) < 0:
            raise UserError(f"--{name} {getattr(o, name)} is invalid: give 0 or more")
    bad = [layer for layer in o.layers if layer not in LAYERS]
    if not o.layers or bad:
        raise UserError(f"--layers: unknown layer(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(LAYERS)}")
    bad = [mode for mode in o.modes if mode not in MODES]
    if not o.modes or bad:
        raise UserError(f"--modes: unknown mode(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(MODES)}")
    if o.device != "auto" and not (o.device == "cpu" or o.device.startswith("cuda")):
        raise UserError(f"--device {o.device} is invalid: give auto, cpu, cuda or cuda:N")


def _parse_list(flag: str, text: str, conv: Callable[[str], Any]) -> list[Any]:
    try:
        items = [conv(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r} is invalid: give a comma-separated list") from None
    return list(dict.fromkeys(items))


def _command_line() -> str:
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "camssl"
    if prog in ("__main__.py", "-m", "-c", "-", ""):
        prog = "python -m camssl"
    elif prog.endswith(".py"):
        prog = f"python {sys.argv[0]}"
    return " ".join([prog, *[shlex.quote(a) for a in sys.argv[1:]]])
