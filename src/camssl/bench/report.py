"""The report: targets checked, docs/benchmarks.md rendered, the console table."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from camssl.bench.measure import PHASES, StepProfile, Timing, flop_model
from camssl.bench.options import (
    E2E_BEGIN,
    E2E_END,
    E2E_PLACEHOLDER,
    IMAGE_SIZE,
    MODEL,
    NUM_CLASSES,
    TARGET_MEMORY,
    TARGET_LGA,
    TARGET_REFERENCE,
    TARGET_STEP_RATIO,
    TARGET_VIEW_SHARE,
)
from camssl.bench.results import BenchResult, WidthResult, mib, ms


@dataclass
class Check:
    """One target of issue 5, measured."""

    kind: str  # step | reference | views | memory | method
    what: str
    limit: float
    measured: float
    at_most: bool = True  # measured <= limit (else >=)
    layer: str | None = None
    mode: str | None = None
    model: float | None = None  # conv-FLOP model of the ratio
    cpu: float | None = None  # the same ratio of CPU-time medians
    noise: float | None = None  # rough 95% half-width of the ratio (from the IQRs)

    @property
    def ok(self) -> bool:
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    @property
    def limit_text(self) -> str:
        sign = "≤" if self.at_most else "≥"
        return f"{sign} {100 * self.limit:.0f}%" if self.kind == "views" else f"{sign} {self.limit:.2f}"

    @property
    def measured_text(self) -> str:
        if self.kind == "views":
            return f"{100 * self.measured:.1f}%"
        return f"{self.measured:.3f}" if self.kind in ("step", "reference", "method") else f"{self.measured:.2f}"

    @property
    def within_noise(self) -> bool:
        return self.noise is not None and abs(self.measured - self.limit) <= self.noise


def _ratio_noise(a: Timing, b: Timing) -> float:
    """Rough 95% half-width of median(a) / median(b): standard error of a median ~ 0.93 * IQR / sqrt(n)."""
    rel = [0.93 * t.iqr / t.median / math.sqrt(len(t.wall)) for t in (a, b) if t.median > 0]
    return 2.0 * math.sqrt(sum(r * r for r in rel)) * (a.median / b.median)


def targets(res: BenchResult) -> list[Check]:
    """The issue's targets at the target width, in a fixed order."""
    wr = next(w for w in res.widths if w.width == res.target_width)
    t, prof = wr.timings, wr.profiles
    o = res.options
    checks: list[Check] = []
    if "pseudo_label" not in t:
        return checks
    pl = t["pseudo_label"]
    base = flop_model("base", None, 0.0, o.batch, o.unlabeled)
    cam_layer = "layer4"

    def share(layer: str, camssl: bool) -> float:
        return 0.0 if camssl and layer == cam_layer else wr.fractions.get(layer, 0.0)

    for mode in o.modes:
        for layer in o.layers:
            key = f"gradcam@{layer}/{mode}"
            if key in t:
                checks.append(Check(
                    "step", f"gradcam @ {layer} {mode} ÷ pseudo_label (time)", TARGET_STEP_RATIO[layer],
                    t[key].median / pl.median, layer=layer, mode=mode,
                    model=flop_model("maps", mode, share(layer, True), o.batch, o.unlabeled) / base,
                    cpu=t[key].cpu_median / pl.cpu_median, noise=_ratio_noise(t[key], pl)))
    for layer in o.layers:
        ref, gc = f"reference@{layer}", f"gradcam@{layer}/full"
        if ref in t and gc in t:
            model = (flop_model("reference", None, share(layer, False), o.batch, o.unlabeled)
                     / flop_model("maps", "full", share(layer, True), o.batch, o.unlabeled))
            checks.append(Check(
                "reference", f"reference (captum) ÷ gradcam @ {layer} full (time)", TARGET_REFERENCE,
                t[ref].median / t[gc].median, at_most=False, layer=layer, mode="full", model=model,
                cpu=t[ref].cpu_median / t[gc].cpu_median, noise=_ratio_noise(t[ref], t[gc])))
    if "lga/classifier" in t:
        lga = t["lga/classifier"]
        checks.append(Check("method", "lga (classifier scope) ÷ pseudo_label (time)", TARGET_LGA,
                            lga.median / pl.median, cpu=lga.cpu_median / pl.cpu_median, noise=_ratio_noise(lga, pl)))
    if "views" in t:
        checks.append(Check("views", "views ÷ pseudo_label step (augmentation share)", TARGET_VIEW_SHARE,
                            t["views"].median / pl.median, cpu=t["views"].cpu_median / pl.cpu_median))
    pl_mem = prof.get("pseudo_label", StepProfile()).peak_bytes
    if pl_mem:
        for mode in o.modes:
            for layer in o.layers:
                mem = prof.get(f"gradcam@{layer}/{mode}", StepProfile()).peak_bytes
                if mem is not None:
                    checks.append(Check("memory", f"peak memory gradcam @ {layer} {mode} ÷ pseudo_label",
                                        TARGET_MEMORY, mem / pl_mem, layer=layer, mode=mode))
    return checks


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def width_table(res: BenchResult, wr: WidthResult) -> list[str]:
    t, prof = wr.timings, wr.profiles
    pl = t["pseudo_label"].median if "pseudo_label" in t else None
    pl_mem = prof.get("pseudo_label", StepProfile()).peak_bytes if prof else None
    rows = []
    for st in wr.types:
        tm = t[st.key]
        ips = f"{st.images / tm.median:.0f}" if st.images else "—"
        ratio = f"{tm.median / pl:.2f}" if pl else "—"
        mem = prof.get(st.key, StepProfile()).peak_bytes if prof else None
        mem_ratio = f"{mem / pl_mem:.2f}" if mem is not None and pl_mem else "—"
        rows.append((st.label, ms(tm.median), ms(tm.iqr), ms(tm.cpu_median) if res.device.type == "cpu" else "—",
                     ips, ratio, mib(mem) if prof else "—", mem_ratio))
    header = ("step", "ms / step (median)", "IQR ms", "CPU ms", "images / s", "× pseudo_label",
              "peak MiB", "memory × pseudo_label")
    return _table(header, rows)


def phase_table(wr: WidthResult) -> list[str]:
    rows = []
    for st in wr.types:
        ph = wr.profiles.get(st.key, StepProfile()).phases
        if not ph or st.kind == "views":
            continue
        total = sum(ph.values()) or 1.0
        rows.append((st.label, *(f"{ph[name]:.0f}" for name in PHASES), f"{total:.0f}"))
    if not rows:
        return []
    return _table(("step (ms, median of the profiled steps)", *PHASES, "total"), rows)


def op_diff(wr: WidthResult, key: str, top: int = 8) -> list[str]:
    pl = wr.profiles.get("pseudo_label", StepProfile()).ops
    other = wr.profiles.get(key, StepProfile()).ops
    if not pl or not other:
        return []
    extra = sorted(((other.get(k, 0.0) - pl.get(k, 0.0), k) for k in set(pl) | set(other)), reverse=True)[:top]
    rows = [(f"`{k}`", f"{pl.get(k, 0.0):.0f}", f"{other.get(k, 0.0):.0f}", f"{d:+.0f}") for d, k in extra]
    return _table(("operator (self CPU time)", "pseudo_label ms", f"{key} ms", "extra ms"), rows)


def render(res: BenchResult, keep: str | None = None) -> str:
    """The whole Markdown report; ``keep``: the hand-written end-to-end section of the file it replaces."""
    checks = targets(res)
    wt = next(w for w in res.widths if w.width == res.target_width)
    lines = _machine_section(res) + _method_section(res, wt) + _targets_section(res, checks)
    for wr in res.widths:
        lines += [f"## Step cost — ResNet-18 width {wr.width:g}", ""]
        lines += width_table(res, wr)
        lines.append("")
    lines += explain(res, wt, checks)
    lines += experiments_md(res)
    lines += ["## End to end: the `cpu` preset on CIFAR-10 (real runs)", "", E2E_BEGIN]
    lines += [keep.strip("\n") if keep else E2E_PLACEHOLDER.rstrip("\n"), E2E_END, ""]
    return "\n".join(lines + _gpu_section(res, wt)) + "\n"


def _amp_text(res: BenchResult) -> str:
    return "bf16 autocast" if res.device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32 (no autocast)"


def _machine_section(res: BenchResult) -> list[str]:
    o, m = res.options, res.machine
    lines = [
        "# Benchmarks: what a training step costs",
        "",
        "Generated by `camssl bench` (source: `src/camssl/bench/`; the same entry point is "
        "`python benchmarks/step_cost.py`). Regenerate this file with:",
        "",
        "```",
        o.command,
        "```",
        "",
        "Everything below except the end-to-end section is produced by that command; do not edit it by hand.",
        "",
        "## Machine",
        "",
        f"- **{m['cpu']}**, {m['cores']}; torch {m['torch']}, {m['threads']} threads; Python {m['python']}, "
        f"{m['os']}; device `{m['device']}`" + (f" ({m['gpu']})" if "gpu" in m else "") + ".",
    ]
    if "load" in m:
        lines.append(f"- Load average (1/5/15 min): {m['load']} — the machine is shared, so absolute times "
                     "drift with the load; the ratios below are measured in one process, interleaved.")
    return lines + [f"- Run took {res.seconds / 60:.1f} min on {time.strftime('%Y-%m-%d %H:%M %Z')}.", ""]


def _method_section(res: BenchResult, wt: WidthResult) -> list[str]:
    o = res.options
    layout, amp = "channels_last" if wt.channels_last else "contiguous", _amp_text(res)
    lines = [
        "## How it is measured",
        "",
        f"- Model: {MODEL} with the CIFAR stem (3×3 conv, no max-pool), {NUM_CLASSES} classes, widths "
        f"{', '.join(f'{w:g}' for w in o.widths)} (the `cpu` preset's width is "
        f"{res.preset_width if res.preset_width is not None else 'unknown'}); {layout} memory format; {amp}.",
        f"- Batch: {o.batch} labeled + {o.unlabeled} unlabeled {IMAGE_SIZE}×{IMAGE_SIZE} {res.data} "
        "(uint8, on the device), the library's default views (weak labeled view, original anchor, strong view).",
        "- A step is exactly the trainer's: `method.step(ctx, batch)` under autocast, `zero_grad`, `backward`, "
        "SGD (Nesterov, momentum 0.9, weight decay 5e-4, lr 0.01) step. All step types of one width share one model "
        "and optimizer (momentum buffers created before timing).",
        f"- Timing: {o.warmup} untimed warm-up step(s) of every step type, then {o.reps} repetitions, interleaved "
        "(every repetition runs every step type once, in a freshly shuffled order, so no step type always "
        "follows the same one), in one process. `ms / step` is the "
        "median wall-clock time" + (" (with `torch.cuda.synchronize` around each step)" if res.device.type == "cuda"
                                    else "") + "; `IQR` its interquartile range; `CPU ms` the median process "
        "CPU time (all threads), a cross-check that is less sensitive to other processes than wall-clock time. "
        "Ratios are ratios of medians.",
        "- images / s counts the images a step consumes: labeled only for `supervised`, labeled + unlabeled "
        "otherwise.",
        "- Peak memory: " + (
            "`torch.cuda.max_memory_allocated` during one step minus `memory_allocated` before it."
            if res.device.type == "cuda" else
            "extra steps of each step type under `torch.profiler` with `profile_memory=True`, which records every "
            "allocation and release of torch's CPU allocator; the peak is the largest number of bytes allocated "
            "since the step began and not yet released (the largest over the profiled steps). It counts every "
            "tensor the step creates — activations kept for backward, the maps' gradient graphs, gradients, "
            "temporaries — but not memory that was live before the step (weights, optimizer state, data, the "
            "previous step's gradients), allocator caches, Python objects or oneDNN's scratch buffers. "
            "tracemalloc would miss torch's allocations, and process RSS would mostly show allocator caching."),
        "- `reference (captum)`: the same objective built without camssl — L_S + L_P from one forward of "
        "labeled + strong images, one no-grad forward for the anchor's prediction, and each view's map from "
        "captum's `LayerGradCam(model, layer).attribute(x, target=anchor_argmax, relu_attributions=True, "
        "grad_kwargs={\"create_graph\": True})` (which runs its own forward pass); map alignment, normalisation "
        "and distance are camssl's, so only the Grad-CAM machinery differs.",
        "- `views only`: the three views of one step (weak labeled view, original anchor, strong view), alone.",
        "- `vat`, `lga` (classifier scope: the closed-form gradient of the classifier layer; all parameters: one "
        "Jacobian–vector product per inner step), `lga + VAT` (`method.vat.weight=0.3`) and `cam_loss`: the "
        "methods' own steps with their default configs (`--no-methods` leaves them out); the rig's batch is the "
        "methods' whole training set, so lga's label table holds these 2 × batch rows.",
        "",
    ]
    if res.captum is not None and o.reference:
        lines += [f"> The reference was not measured: {res.captum}.", ""]
    return lines


def _targets_section(res: BenchResult, checks: list[Check]) -> list[str]:
    lines = [f"## Targets (ResNet-18 width {res.target_width:g}, ratios of medians from this run)", ""]
    if checks:
        rows = [(c.what, c.limit_text, c.measured_text, f"± {c.noise:.3f}" if c.noise is not None else "—",
                 f"{c.cpu:.3f}" if c.cpu is not None else "—", f"{c.model:.2f}" if c.model is not None else "—",
                 "PASS" if c.ok else "**MISS**") for c in checks]
        lines += _table(("target", "limit", "measured", "noise (≈95%)", "CPU-time ratio", "conv-FLOP model",
                         "result"), rows)
        n_miss = sum(not c.ok for c in checks)
        lines += ["", f"{len(checks) - n_miss} of {len(checks)} targets met."]
    lines += [
        "",
        "The *conv-FLOP model* column is the ratio predicted by counting convolution multiply-adds only "
        "(a backward pass = 2 forward passes; a first-order Grad-CAM gradient = the input gradients of the "
        "convolutions after the target layer; `full` mode adds their second-order terms, 2 more forward "
        "passes of those convolutions over the whole batch; camssl's closed form at layer4 needs none). "
        "It ignores batch-norm, ReLU and memory traffic, so it is a floor for the gradcam ratios and an "
        "estimate for the reference ratio. *noise* is a rough 95% half-width of the measured ratio, from the "
        "interquartile ranges of the two step types (standard error of a median ≈ 0.93 × IQR / √n); "
        "*CPU-time ratio* is the same ratio of process CPU-time medians.",
        "",
    ]
    return lines


def _gpu_section(res: BenchResult, wt: WidthResult) -> list[str]:
    layout, amp, m = "channels_last" if wt.channels_last else "contiguous", _amp_text(res), res.machine
    lines = ["## GPU", ""]
    if res.device.type == "cuda":
        lines += [f"These tables were measured on {m.get('gpu', 'a GPU')} with {amp} and the {layout} memory "
                  "format. Compare with a CPU run of the same command (`--device cpu`).", ""]
    else:
        lines += ["No GPU was available for this run. The benchmark is device-agnostic: with CUDA available "
                  "(`--device auto`, the default) it runs the same steps with bf16 autocast and channels_last, "
                  "synchronises around every timed step and reports `torch.cuda.max_memory_allocated`; write that "
                  "table next to this one with `camssl bench --out docs/benchmarks-gpu.md`.", ""]
    return lines


def explain(res: BenchResult, wr: WidthResult, checks: list[Check]) -> list[str]:
    n = max(1, res.options.profile_reps)
    lines = [f"## Where the time goes (width {wr.width:g}, {n} profiled step{'s' if n > 1 else ''} each)", ""]
    table = phase_table(wr)
    if not table:
        return lines + ["No profile in this run (`--no-memory`, or a CUDA device whose host-side profile would "
                        "not show the GPU's time).", ""]
    lines += [
        "Phases of a step under `torch.profiler`, median over the profiled steps of each step type (interleaved; "
        "wall time on the training thread; the profiler adds some overhead, so totals exceed the medians above). *Grad-CAM gradients* is autograd work inside "
        "`method.step` (the maps' gradients); *backward (second order)* is autograd nodes named "
        "`*BackwardBackward*` in `loss.backward()`, i.e. differentiating the maps' gradients (`full` mode).",
        "",
        *table,
        "",
    ]
    missed = [c for c in checks if not c.ok]
    if not missed:
        return lines + ["Every target is met in this run.", ""]
    lines += ["### Why the misses remain", ""]
    lines += _step_misses(wr, checks, [c for c in missed if c.kind == "step"])
    lines += _reference_misses(checks, [c for c in missed if c.kind == "reference"])
    lines += _memory_misses(wr, checks, [c for c in missed if c.kind == "memory"])
    for c in missed:
        if c.kind == "views":
            lines += [f"- **{c.what}**: {c.measured_text} (limit {c.limit_text}).", ""]
    return lines


def _step_misses(wr: WidthResult, checks: list[Check], step_misses: list[Check]) -> list[str]:
    lines: list[str] = []
    pl_ph = wr.profiles.get("pseudo_label", StepProfile()).phases or {}
    if step_misses:
        models = "; ".join(f"{c.layer} {c.mode} {c.model:.2f} (limit {c.limit:.2f})" for c in checks
                           if c.kind == "step" and c.model is not None)
        detail = []
        for c in step_misses:
            ph = wr.profiles.get(f"gradcam@{c.layer}/{c.mode}", StepProfile()).phases
            text = f"  - gradcam @ {c.layer} {c.mode}: {c.measured_text} (limit {c.limit_text}, conv-FLOP model " \
                   f"{c.model:.2f}, CPU-time ratio {c.cpu:.3f})"
            if c.within_noise or (c.cpu is not None and c.cpu <= c.limit):
                text += (f": within the measurement noise (± {c.noise:.3f}); the CPU-time ratio "
                         f"{'meets' if c.cpu is not None and c.cpu <= c.limit else 'misses'} the limit")
                if c.model is not None and c.model <= c.limit:
                    text += ", and the step's extra work is small (conv-FLOP model " + f"{c.model:.2f})"
            elif c.model is not None and c.model <= c.limit:
                text += (": the convolutions cost the same as pseudo_label's (conv-FLOP model "
                         f"{c.model:.2f}); the excess is the maps' own element-wise work (alignment, normalisation, "
                         "distance and their backward), the tap hooks, and noise — it weighs most on tiny models "
                         "and batches")
            if ph and pl_ph and not (c.model is not None and c.model <= 1.0):
                extra = {k: ph[k] - pl_ph.get(k, 0.0) for k in PHASES}
                top = ", ".join(f"{k} {v:+.0f} ms" for k, v in sorted(extra.items(), key=lambda kv: -kv[1])[:3])
                text += f"; extra over pseudo_label in the profile: {top}"
            detail.append(text + ".")
        lines += [
            "- **gradcam ÷ pseudo_label.** A Grad-CAM map at a layer below the last needs the gradient of the "
            "class score with respect to that layer's output: a backward pass through every layer after it, for "
            "the anchor (its map is the target) and for the labeled + strong forward (the strong rows' maps; "
            "labeled and strong images share that forward and its batch-norm statistics, so this gradient runs "
            "over the whole batch). In `full` mode the loss is differentiated through those gradients as well "
            "(double backward: for every convolution after the layer, one more convolution for the `grad_output` "
            "term and one weight-gradient convolution, plus batch-norm's second-order formula, which PyTorch "
            "computes with a chain of element-wise kernels). With equal labeled and unlabeled batches the "
            "conv-FLOP model puts `full` mode at 1 + (the share of convolution work after the layer) and "
            f"`detach-weights` at 1 + 3/7 of that share; here: {models}. A target below its model value cannot "
            "be met by any implementation of the same objective in that mode. What remains above the model is "
            "batch-norm's double backward, element-wise work and memory traffic:",
            *detail,
        ]
        worst = max((c for c in step_misses if c.model is not None and c.model > 1.0),
                    key=lambda c: c.measured, default=None)
        if worst is not None:
            key = f"gradcam@{worst.layer}/{worst.mode}"
            diff = op_diff(wr, key)
            if diff:
                lines += ["", f"  Operators with the most extra time in {key} (self CPU time, median of the "
                          "profiled steps):", ""]
                lines += ["  " + row for row in diff]
        lines.append("")
    return lines


def _reference_misses(checks: list[Check], ref_misses: list[Check]) -> list[str]:
    lines: list[str] = []
    if ref_misses:
        models = "; ".join(f"{c.layer} {c.model:.2f}" for c in checks if c.kind == "reference" and c.model)
        measured = "; ".join(f"{c.layer} {c.measured_text}" for c in ref_misses)
        lines += [
            "- **reference ÷ camssl.** camssl gets every map from forward passes the step makes anyway (the "
            "reference makes two more: captum's own forward of the anchor and of the strong view), computes "
            "layer4's map in closed form (no backward at all), and folds the map's backward into the step's "
            "single backward pass. The reference's extra work is therefore about 2 forward passes of the "
            "unlabeled batch plus the backward through captum's strong-view forward — roughly 4/7 of a "
            "pseudo_label step — while camssl's `full` mode runs its first- and second-order map gradients over "
            "the labeled rows too (they share the forward and its batch-norm statistics). The conv-FLOP model "
            f"of the ratio: {models}. Where it is below 2, the 2× target asks for more than the difference in "
            f"work between two implementations of the same objective. Measured: {measured}.",
            "",
        ]
    return lines


def _memory_misses(wr: WidthResult, checks: list[Check], mem_misses: list[Check]) -> list[str]:
    lines: list[str] = []
    if mem_misses:
        pl_mem = wr.profiles.get("pseudo_label", StepProfile()).peak_bytes or 0
        detail = []
        for c in mem_misses:
            mem = wr.profiles.get(f"gradcam@{c.layer}/{c.mode}", StepProfile()).peak_bytes or 0
            other = next((d for d in checks if d.kind == "memory" and d.layer == c.layer and d.mode != c.mode), None)
            text = f"  - gradcam @ {c.layer} {c.mode}: {c.measured_text} (limit {c.limit_text}), " \
                   f"{(mem - pl_mem) / 2**20:+.0f} MiB over pseudo_label"
            if other is not None:
                text += f"; the same layer in {other.mode} mode: {other.measured_text}"
            detail.append(text + ".")
        lines += [
            "- **peak memory.** Until the backward pass, a step keeps the activations its backward needs. "
            "A Grad-CAM map below the last layer adds the graph of the maps' gradients: in `full` mode every "
            "gradient tensor of the layers after the target (and what their second-order formulas need, e.g. "
            "batch-norm's inputs and statistics), over the whole labeled + strong batch, stays alive until "
            "`loss.backward()` has differentiated it — that is what `create_graph=True` means, and the earlier "
            "the layer, the more of the network it covers. `detach-weights` keeps "
            "none of it.",
            *detail,
            "",
        ]
    return lines


def experiments_md(res: BenchResult) -> list[str]:
    lines = ["## What we tried", ""]
    if res.pending:
        lines += ["_The experiments below are still running; this is an intermediate report._", ""]
    if not res.experiments:
        return lines + ["Not measured in this run (`--no-experiments`).", ""]
    lines += [f"Measured at width {res.target_width:g}, interleaved in one process like the main tables, "
              f"{res.options.warmup or 1} warm-up step(s) and the median of {res.options.exp_reps} repetitions.", ""]
    for e in res.experiments:
        lines += [f"### {e.title}", ""]
        if e.rows:
            lines += _table(e.header, e.rows)
            lines.append("")
        if e.verdict:
            lines += [e.verdict, ""]
        if e.note:
            lines += [e.note, ""]
    return lines


def console_table(res: BenchResult) -> str:
    out = []
    for wr in res.widths:
        pl = wr.timings["pseudo_label"].median if "pseudo_label" in wr.timings else None
        out.append(f"\nResNet-18 width {wr.width:g} ({'channels_last' if wr.channels_last else 'contiguous'}, "
                   f"{res.device}):")
        out.append(f"  {'step':<52} {'ms/step':>9} {'img/s':>7} {'×PL':>6} {'peak MiB':>9}")
        for st in wr.types:
            tm = wr.timings[st.key]
            mem = wr.profiles.get(st.key, StepProfile()).peak_bytes if wr.profiles else None
            ips = f"{st.images / tm.median:.0f}" if st.images else "—"
            ratio = f"{tm.median / pl:.2f}" if pl else "—"
            out.append(f"  {st.label:<52} {ms(tm.median):>9} {ips:>7} {ratio:>6} {mib(mem):>9}")
    checks = targets(res)
    if checks:
        out.append(f"\nTargets (width {res.target_width:g}):")
        for c in checks:
            out.append(f"  {'PASS' if c.ok else 'MISS'}  {c.what:<58} {c.measured_text:>7}  (limit {c.limit_text})")
    return "\n".join(out)
