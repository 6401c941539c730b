"""Running the benchmark: the machine, the batch, every width, then the trials."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from camssl.bench.measure import (
    StepProfile,
    conv_flop_fractions,
    interleaved,
    median_profile,
    profile_step,
)
from camssl.bench.options import BenchOptions
from camssl.bench.precision import experiment_precision
from camssl.bench.results import BenchResult, Experiment, WidthResult
from camssl.bench.rig import Rig, StepType, build_step, load_images, step_types
from camssl.bench.trials import experiment_threads, guarded, run_experiments
from camssl.machine import cpu_name, usable_cores
from camssl.train import pick_device


def captum_status() -> str | None:
    try:
        import captum.attr  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"captum is not importable ({type(exc).__name__}: {exc}); install it with pip install captum"
    return None


def _preset_width() -> float | None:
    try:
        from camssl.config import load_config

        return float(load_config("cpu").model.width)
    except Exception:  # noqa: BLE001
        return None


def machine_info(device: torch.device) -> dict[str, str]:
    cpu, usable = cpu_name(), usable_cores()
    info = {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical CPUs, {usable} usable by this process",
        "torch": torch.__version__,
        "threads": f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError, AttributeError):
        info["load"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return info


def _make_batch(o: BenchOptions, device: torch.device) -> tuple[Any, str]:
    from camssl.methods import Batch

    images, labels, source = load_images(o.batch + o.unlabeled, o.seed)
    b = o.batch
    n = o.batch + o.unlabeled
    idx = torch.arange(n, device=device)  # indices into the rig's "training set" (the batch itself)
    batch = Batch(images[:b].to(device), labels[:b].to(device), images[b:].to(device), labels[b:].to(device),
                  idx_l=idx[:b], idx_u=idx[b:])
    return batch, source


def run_width(o: BenchOptions, width: float, device: torch.device, batch: Any, types: list[StepType],
              channels_last: bool, detailed: bool = True) -> WidthResult:
    log = o.log
    rig = Rig(width, batch, device, channels_last, o.seed)
    rig.init_optimizer_state()
    steps = {st.key: build_step(rig, st) for st in types}
    log(f"width {width:g}: {len(types)} step types, {o.warmup} warm-up + {o.reps} interleaved repetitions each")
    timings = interleaved({k: (lambda f=f: f(False)) for k, f in steps.items()}, o.reps, o.warmup, device, log,
                          f"width {width:g}: ")
    profiles: dict[str, StepProfile] = {}
    if o.memory:
        n = max(1, o.profile_reps if detailed else 1)
        log(f"width {width:g}: {n} profiled step(s) per step type (peak memory, time breakdown)")
        runs: dict[str, list[StepProfile]] = {st.key: [] for st in types}
        for _ in range(n):  # interleaved too
            for st in types:
                runs[st.key].append(profile_step(steps[st.key], device))
        profiles = {key: median_profile(value) for key, value in runs.items()}
    fractions = conv_flop_fractions(rig.base_model, device, o.layers)
    return WidthResult(width, channels_last, types, timings, profiles, fractions)


def run_bench(o: BenchOptions, checkpoint: Callable[[BenchResult], None] | None = None) -> BenchResult:
    """Run the benchmark described by ``o`` and return its results.

    ``checkpoint`` (e.g. writing the report) is called once the main tables are measured,
    before the "what we tried" experiments, so that a failure there loses nothing.
    """
    t0 = time.time()
    device = pick_device(o.device, option="--device ")
    channels_last = o.channels_last == "on" or (o.channels_last == "auto" and device.type == "cuda")
    captum = captum_status() if o.reference else None
    batch, data = _make_batch(o, device)
    preset = _preset_width()
    target_width = preset if preset in o.widths else o.widths[0]
    experiments: list[Experiment] = []
    if device.type == "cpu":
        threads_exp = None
        if o.experiments or not o.threads:
            threads_exp = guarded("Intra-op threads (torch.set_num_threads)", experiment_threads, o, target_width,
                                   device, batch, channels_last)
            experiments.append(threads_exp)
        if o.threads:
            torch.set_num_threads(o.threads)
        elif threads_exp is not None and threads_exp.winner:
            torch.set_num_threads(threads_exp.winner)
    machine = machine_info(device)
    types = step_types(o, captum is None)
    widths = [run_width(o, w, device, batch, types, channels_last, w == target_width) for w in o.widths]
    if o.precision and device.type == "cpu":
        experiments.append(guarded("Precision: fp32 vs bf16 autocast", experiment_precision, o, device, batch))
    res = BenchResult(o, device, machine, widths, experiments, target_width, preset, data, captum,
                      time.time() - t0, pending=o.experiments)
    if checkpoint is not None:
        checkpoint(res)
    if o.experiments:
        res.experiments += run_experiments(o, target_width, device, batch, channels_last)
    res.pending = False
    with contextlib.suppress(OSError, AttributeError):
        if "load" in machine:
            machine["load"] += " at start; {:.2f} {:.2f} {:.2f} at the end".format(*os.getloadavg())
    res.seconds = time.time() - t0
    return res
