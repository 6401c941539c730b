"""fp32 against bf16 autocast, per method, on the ``fast`` preset's model: one table, timed interleaved.

On a CPU with native bf16 (AVX-512 BF16 or AMX) ``amp=true`` trains under bf16 autocast
(:mod:`camssl.train.precision`); this experiment times every method's step both ways on the
same batch, each precision on its own copy of the model, all step types interleaved, and
checks the target of the fast-regime issue: a bf16 step at least 1.5x as fast as fp32.
"""

from __future__ import annotations

from typing import Any

import torch

from camssl.bench.measure import interleaved
from camssl.bench.options import BenchOptions
from camssl.bench.results import Experiment, ms
from camssl.bench.rig import CORE, Rig, build_step, method_steps
from camssl.errors import ConfigError

TARGET_BF16_SPEEDUP = 1.5  # the fast-regime issue: bf16 step >= 1.5 x fp32 on a CPU with native bf16


def fast_model() -> tuple[dict[str, Any], bool]:
    """The ``fast`` preset's model (build arguments) and whether it trains in channels_last."""
    from camssl.config import load_config

    cfg = load_config("fast")
    args = cfg.model.build_args(10)
    args.pop("num_classes")
    return args, cfg.model.channels_last


def experiment_precision(o: BenchOptions, device: torch.device, batch: Any) -> Experiment:
    """Every registered method's step in fp32 and in bf16 autocast, interleaved; speed-up per method."""
    from camssl.machine import cpu_bf16_reason

    title = "Precision: fp32 vs bf16 autocast per method (the fast preset's model)"
    args, channels_last = fast_model()
    if o.quick and args.get("widths"):  # the smoke run: the same network at an eighth of its widths
        args["widths"] = [max(4, w // 8) for w in args["widths"]]
    o.log(f"experiment: precision (fp32 vs bf16) on {args['name']}")
    types = method_steps(o, CORE) + (method_steps(o) if o.methods else [])
    steps, skipped = {}, []
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        rig = Rig(1.0, batch, device, channels_last, o.seed, model_args=args, amp_dtype=dtype)
        rig.init_optimizer_state()
        for st in list(types):
            try:
                f = build_step(rig, st)
                f(False)  # a step the model cannot take (e.g. L_cam without a cam_layer) is left out
            except ConfigError as e:
                skipped.append(f"{st.label} ({e})")
                types.remove(st)
                continue
            steps[f"{st.key}|{name}"] = lambda f=f: f(False)
    steps = {k: f for k, f in steps.items() if k.split("|")[0] in {st.key for st in types}}
    t = interleaved(steps, o.exp_reps, 1, device, o.log, "precision: ")
    rows, speedups = [], []
    for st in types:
        a, b = t[f"{st.key}|fp32"].median, t[f"{st.key}|bf16"].median
        speedups.append(a / b)
        rows.append((st.label, ms(a), ms(b), f"{a / b:.2f}", f"{st.images / b:.0f}"))
    missed = [st.label for st, x in zip(types, speedups) if x < TARGET_BF16_SPEEDUP]
    verdict = (f"bf16 autocast is {min(speedups):.2f}-{max(speedups):.2f}x as fast as fp32 across the methods; "
               f"target >= {TARGET_BF16_SPEEDUP}x: " + ("met by every method" if not missed else
                                                          f"missed by {', '.join(missed)}")
               + f". This CPU: {cpu_bf16_reason()}.")
    widths = args.get("widths") or args.get("width")
    note = (f"{args['name']} ({widths}, pool {args.get('pool', 'max')}), channels_last={channels_last}, "
            f"{o.batch} labeled + {o.unlabeled} unlabeled images per step, {o.exp_reps} interleaved repetitions "
            "after one warm-up; medians." + (f" Left out: {'; '.join(skipped)}." if skipped else ""))
    return Experiment(title, rows, ("step", "fp32 ms", "bf16 ms", "speed-up", "bf16 images / s"), verdict, note)
