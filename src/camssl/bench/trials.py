""""What we tried": memory layout, intra-op threads and torch.compile, each measured interleaved."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch

from camssl.bench.measure import interleaved
from camssl.bench.options import BenchOptions
from camssl.bench.results import Experiment, first_line, ms
from camssl.bench.rig import Rig, StepType, build_step
from camssl.machine import usable_cores


def _exp_types(o: BenchOptions) -> list[StepType]:
    n = o.batch + o.unlabeled
    out = [StepType("supervised", "supervised", "supervised", images=o.batch),
           StepType("pseudo_label", "pseudo_label", "pseudo_label", images=n)]
    for layer in o.layers:
        if "full" in o.modes:
            out.append(StepType(f"gradcam@{layer}/full", f"gradcam @ {layer} full", "gradcam", layer, "full", n))
    if "detach-weights" in o.modes:
        layer = "layer3" if "layer3" in o.layers else o.layers[0]
        out.append(StepType(f"gradcam@{layer}/detach-weights", f"gradcam @ {layer} detach-weights", "gradcam",
                            layer, "detach-weights", n))
    return out


def run_experiments(o: BenchOptions, width: float, device: torch.device, batch: Any,
                    channels_last: bool) -> list[Experiment]:
    """Memory layout and torch.compile (the thread experiment runs first, in :func:`run_bench`)."""
    exps = [guarded("Memory layout: contiguous vs channels_last", experiment_layout, o, width, device, batch)]
    if o.compile:
        exps.append(guarded("torch.compile (default mode, inductor)", experiment_compile, o, width, device, batch,
                             channels_last))
    else:
        exps.append(Experiment("torch.compile", [], (), note="not measured in this run (--no-compile or --quick)."))
    return exps


def guarded(title: str, fn: Callable[..., Experiment], *args: Any) -> Experiment:
    """Run one experiment; a failure becomes a note instead of losing the whole benchmark."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return Experiment(title, [], (), note=f"The experiment failed: {type(exc).__name__}: {first_line(exc)}")


def experiment_layout(o: BenchOptions, width: float, device: torch.device, batch: Any) -> Experiment:
    o.log(f"experiment: memory layout (width {width:g})")
    types = _exp_types(o)
    rigs = {"contiguous": Rig(width, batch, device, False, o.seed), "channels_last": Rig(width, batch, device, True,
                                                                                           o.seed)}
    steps = {}
    for name, rig in rigs.items():
        rig.init_optimizer_state()
        for st in types:
            f = build_step(rig, st)
            steps[f"{st.key}|{name}"] = lambda f=f: f(False)
    t = interleaved(steps, o.exp_reps, max(1, o.warmup), device)
    rows = []
    faster: dict[str, list[str]] = {"contiguous": [], "channels_last": []}
    pl = t["pseudo_label|contiguous"].median, t["pseudo_label|channels_last"].median
    relative_better = True  # every gradcam step is cheaper relative to pseudo_label in contiguous
    for st in types:
        a, b = t[f"{st.key}|contiguous"].median, t[f"{st.key}|channels_last"].median
        faster["channels_last" if b < a else "contiguous"].append(f"{st.label} ({100 * (b / a - 1):+.0f}%)")
        ratio_c, ratio_cl = a / pl[0], b / pl[1]
        if st.layer is not None and ratio_c > ratio_cl:  # a map step (gradcam at a layer)
            relative_better = False
        rows.append((st.label, ms(a), ms(b), f"{b / a:.2f}", f"{ratio_c:.2f}", f"{ratio_cl:.2f}"))
    verdict = ("channels_last is faster for " + (", ".join(faster["channels_last"]) or "none") +
               "; contiguous is faster for " + (", ".join(faster["contiguous"]) or "none") +
               " (percentages: channels_last time relative to contiguous). ")
    if relative_better:
        verdict += ("Relative to pseudo_label, every gradcam step is cheaper in the contiguous layout: "
                    "channels_last speeds the first-order convolutions more than the second-order terms and "
                    "batch-norm's double backward, which it slows. ")
    main = "channels_last" if (o.channels_last == "on" or (o.channels_last == "auto" and device.type == "cuda")) \
        else "contiguous"
    verdict += f"The main tables use {main} (`--channels-last {o.channels_last}`)."
    return Experiment("Memory layout: contiguous vs channels_last", rows,
                      ("step", "contiguous ms", "channels_last ms", "channels_last ÷ contiguous",
                       "× pseudo_label (contiguous)", "× pseudo_label (channels_last)"), verdict)


def experiment_threads(o: BenchOptions, width: float, device: torch.device, batch: Any,
                       channels_last: bool) -> Experiment:
    cores = usable_cores()
    default = torch.get_num_threads()
    counts = sorted({1, default, cores})
    if len(counts) < 2:
        return Experiment("Intra-op threads (torch.set_num_threads)", [], (),
                          note=f"{cores} core, {default} thread: nothing to compare.")
    o.log(f"experiment: threads {counts} (width {width:g})")
    rig = Rig(width, batch, device, channels_last, o.seed)
    rig.init_optimizer_state()
    layer = "layer3" if "layer3" in o.layers else o.layers[0]
    n = o.batch + o.unlabeled
    types = [StepType("pseudo_label", "pseudo_label", "pseudo_label", images=n),
             StepType(f"gradcam@{layer}/full", f"gradcam @ {layer} full", "gradcam", layer, "full", n)]
    steps = {}
    for st in types:
        f = build_step(rig, st)
        for n in counts:
            def run(f: Callable[[bool], None] = f, n: int = n) -> None:
                torch.set_num_threads(n)
                try:
                    f(False)
                finally:
                    torch.set_num_threads(default)
            steps[f"{st.key}|{n}"] = run
    t = interleaved(steps, o.exp_reps, max(1, o.warmup), device)
    rows = []
    for st in types:
        rows.append((st.label, *(ms(t[f"{st.key}|{n}"].median) for n in counts),
                     *(ms(t[f"{st.key}|{n}"].cpu_median) for n in counts)))
    best = {n: sum(t[f"{st.key}|{n}"].median for st in types) for n in counts}
    winner = min(best, key=best.__getitem__)
    used = o.threads or winner
    verdict = (f"Faster in total: {winner} thread{'s' if winner > 1 else ''} (torch's default here: {default}). "
               f"The main tables ran with {used} ({'set by --threads' if o.threads else 'the faster, kept'}). "
               "This experiment runs first, at the width the targets are checked at. The answer depends on the "
               "load: when other processes keep the cores busy, a team of OpenMP threads waits (spinning) for "
               "whichever member was descheduled, and one thread can be several times faster than two; on an "
               "idle machine more threads win.")
    header = ("step", *(f"{n} thread{'s' if n > 1 else ''} ms" for n in counts),
              *(f"{n} thread{'s' if n > 1 else ''} CPU ms" for n in counts))
    return Experiment("Intra-op threads (torch.set_num_threads)", rows, header, verdict, winner=winner)


def experiment_compile(o: BenchOptions, width: float, device: torch.device, batch: Any,
                       channels_last: bool) -> Experiment:
    """Whole-model ``torch.compile``: pseudo_label, the closed-form map, then one autograd-route map."""
    o.log(f"experiment: torch.compile (width {width:g}); compiling takes minutes on a small CPU")
    rig = Rig(width, batch, device, channels_last, o.seed)
    rig.init_optimizer_state()
    compiled = torch.compile(rig.model)
    cam_layer = getattr(rig.base_model, "cam_layer", "layer4")
    n = o.batch + o.unlabeled
    closed = StepType(f"gradcam@{cam_layer}/full", f"gradcam @ {cam_layer} full (closed form)", "gradcam",
                      cam_layer, "full", n)
    other = next((layer for layer in o.layers if layer != cam_layer), "layer3")
    autograd_route = StepType(f"gradcam@{other}/full", f"gradcam @ {other} full", "gradcam", other, "full", n)
    notes: list[str] = []
    pairs: dict[str, dict[str, Callable[[], None]]] = {}
    for st in (StepType("pseudo_label", "pseudo_label", "pseudo_label", images=n), closed):
        eager, comp = build_step(rig, st), build_step(rig, st, model=compiled)
        t0 = time.perf_counter()
        try:
            comp(False)
            comp(False)
        except Exception as exc:  # noqa: BLE001 - report why compile does not work here
            notes.append(f"{st.label}: the compiled step fails ({type(exc).__name__}: {first_line(exc)})")
            continue
        notes.append(f"{st.label}: compiling + 2 steps took {time.perf_counter() - t0:.0f} s")
        pairs[st.label] = {f"{st.label}|eager": lambda f=eager: f(False), f"{st.label}|compiled": lambda f=comp: f(False)}
    rows: list[tuple[str, ...]] = []
    timed = dict(pairs)
    while timed:
        steps = {k: v for pair in timed.values() for k, v in pair.items()}
        try:
            t = interleaved(steps, o.exp_reps, 1, device)
        except Exception as exc:  # noqa: BLE001 - e.g. taps whose hooks a cached graph no longer runs
            dropped = next(label for label in reversed(timed) if label != "pseudo_label") if len(timed) > 1 \
                else next(iter(timed))
            notes.append(f"{dropped}: interleaved with the other compiled steps, the compiled step fails "
                         f"({type(exc).__name__}: {first_line(exc)}), so it is not timed")
            del timed[dropped]
            continue
        for label in timed:
            a, b = t[f"{label}|eager"].median, t[f"{label}|compiled"].median
            rows.append((label, ms(a), ms(b), f"{b / a:.2f}"))
        break
    # last: a failed compile can leave dynamo's cache unusable for the steps above
    try:
        build_step(rig, autograd_route, model=compiled)(False)
        notes.append(f"{autograd_route.label}: the compiled step runs")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"{autograd_route.label}: the compiled step fails ({type(exc).__name__}: {first_line(exc)})")
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    verdict = "; ".join(notes) + "."
    return Experiment("torch.compile (whole model, default mode, inductor)", rows,
                      ("step", "eager ms", "compiled ms", "compiled ÷ eager"), verdict)
