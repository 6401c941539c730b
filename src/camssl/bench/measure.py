"""Interleaved timing, profiled steps (phases, peak memory) and a conv-FLOP model of the ratios."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from camssl.bench.options import IMAGE_SIZE


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def iqr(self) -> float:
        if len(self.wall) < 2:
            return 0.0
        q = statistics.quantiles(self.wall, n=4, method="inclusive")
        return q[2] - q[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(steps: dict[str, Callable[[], None]], reps: int, warmup: int, device: torch.device,
                log: Callable[[str], None] | None = None, what: str = "") -> dict[str, Timing]:
    """Time every step ``reps`` times, interleaved: each repetition runs every step once, in an order
    shuffled (seeded) per repetition, so that no step always follows the same one (the previous
    step's memory use and cache state would otherwise bias it)."""
    keys = list(steps)
    order_gen = random.Random(len(keys) * 1000 + reps)
    for _ in range(warmup):
        for key in keys:
            steps[key]()
    _sync(device)
    out = {key: Timing() for key in keys}
    t_start = time.perf_counter()
    for r in range(reps):
        order = keys[:]
        order_gen.shuffle(order)
        for key in order:
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            steps[key]()
            _sync(device)
            out[key].wall.append(time.perf_counter() - w0)
            out[key].cpu.append(time.process_time() - c0)
        if log is not None:
            log(f"  {what}repetition {r + 1}/{reps} done ({time.perf_counter() - t_start:.0f}s)")
    return out


PHASES = ("views", "forward + losses", "Grad-CAM gradients", "backward (first order)",
          "backward (second order)", "optimizer")


@dataclass
class StepProfile:
    peak_bytes: int | None = None
    phases: dict[str, float] | None = None  # ms
    ops: dict[str, float] | None = None  # self CPU ms per operator


def profile_step(step: Callable[[bool], None], device: torch.device) -> StepProfile:
    """Run one step and measure its peak memory (and, on CPU, its time breakdown)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(False)
        _sync(device)
        return StepProfile(peak_bytes=torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(True)
    return StepProfile(peak_bytes=_peak_cpu_bytes(prof), phases=_phases(prof), ops=_op_times(prof))


def median_profile(runs: list[StepProfile]) -> StepProfile:
    """Largest peak memory; median phase and operator times over the profiled steps."""
    peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]

    def median_of(dicts: list[dict[str, float]]) -> dict[str, float] | None:
        if not dicts:
            return None
        keys = set().union(*dicts)
        return {k: statistics.median(d.get(k, 0.0) for d in dicts) for k in keys}

    return StepProfile(peak_bytes=max(peaks) if peaks else None,
                       phases=median_of([r.phases for r in runs if r.phases]),
                       ops=median_of([r.ops for r in runs if r.ops]))


def _peak_cpu_bytes(prof: Any) -> int | None:
    try:
        events = prof.profiler.kineto_results.events()
        memory = sorted((e.start_ns(), e.nbytes()) for e in events
                        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    except Exception:  # noqa: BLE001 - private profiler API; report "n/a" rather than fail
        return None
    total = peak = 0
    for _, nbytes in memory:
        total += nbytes
        peak = max(peak, total)
    return peak


def _phases(prof: Any) -> dict[str, float] | None:
    try:
        events = list(prof.events())
    except Exception:  # noqa: BLE001
        return None

    def enclosing(event: Any) -> str | None:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("bench."):
                return parent.name
            parent = parent.cpu_parent
        return None

    total = {name: 0.0 for name in ("step.method", "step.backward", "step.optimizer")}
    views = cam = first = second = 0.0
    for e in events:
        ms = e.cpu_time_total / 1000.0
        if e.name in total:
            total[e.name] += ms
        elif e.name == "bench.views":
            views += ms
        elif e.name.startswith("autograd::engine::evaluate_function"):
            where = enclosing(e)
            if where == "step.method":
                cam += ms
            elif where == "step.backward":
                if "BackwardBackward" in e.name:
                    second += ms
                else:
                    first += ms
    return {
        "views": views,
        "forward + losses": max(0.0, total["step.method"] - views - cam),
        "Grad-CAM gradients": cam,
        "backward (first order)": max(0.0, total["step.backward"] - second),
        "backward (second order)": second,
        "optimizer": total["step.optimizer"],
    }


def _op_times(prof: Any) -> dict[str, float] | None:
    try:
        return {k.key: k.self_cpu_time_total / 1000.0 for k in prof.key_averages()
                if not k.key.startswith(("bench.", "autograd::", "[memory]"))}
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------- a conv-FLOP model of the ratios


def conv_flop_fractions(model: nn.Module, device: torch.device, layers: Sequence[str]) -> dict[str, float]:
    """For each layer, the fraction of the model's convolution multiply-adds that run after it."""
    macs: list[tuple[str, int]] = []
    finished: dict[str, int] = {}
    handles = []

    def conv_hook(module: nn.Conv2d, args: Any, output: Tensor) -> None:
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        macs.append(("conv", output[0].numel() * k))

    def stage_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            finished[name] = len(macs)
        return hook

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
    for name in layers:
        handles.append(model.get_submodule(name).register_forward_hook(stage_hook(name)))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device))
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    total = sum(m for _, m in macs) or 1
    return {name: sum(m for _, m in macs[finished[name]:]) / total for name in layers}


def flop_model(kind: str, mode: str | None, p: float, n_l: int, n_u: int) -> float:
    """Step cost in conv-FLOP units (one image's forward = 1), counting convolutions only.

    ``kind``: ``base`` (the semi-supervised step without maps: a no-grad anchor forward, the
    labeled + strong forward and its backward), ``maps`` (the same with Grad-CAM maps at a
    layer after which ``p`` of the convolutions lie) or ``reference`` (captum's maps).

    Backward = input gradients + weight gradients = 2 forwards; a first-order Grad-CAM
    gradient = input gradients of the convolutions after the layer (``p`` of them);
    second order = 2 more forwards of those convolutions (``grad_output`` and weight
    terms of the double backward). ``p`` is 0 at the closed-form layer for camssl.
    """
    n = n_l + n_u
    pl = n_u + n + 2 * n  # no-grad anchor forward, labeled + strong forward, backward
    if kind == "base":
        return pl
    if kind == "maps":
        extra = p * (n_u + n)  # anchor's and the batch's first-order map gradients
        if mode == "full":
            extra += 2 * p * n  # second-order terms over the whole batch
        return pl + extra
    if kind == "reference":
        # captum: two more forwards (anchor, strong), their create_graph gradients, and the
        # backward through the strong one: below the layer (2(1-p)), and above it first
        # order (2p, from batch-norm's second-order terms) and second order (2p)
        return pl + 2 * n_u + 2 * p * n_u + 2 * (1 - p) * n_u + 4 * p * n_u
    raise ValueError(kind)
