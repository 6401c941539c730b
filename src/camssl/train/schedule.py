"""Per-step learning-rate schedules, the EMA of the weights, and the optimiser's parameter groups."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from camssl.config import OptimConfig


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Learning-rate multiplier at ``step`` of ``total`` (per-step schedule)."""
    if schedule == "onecycle":
        peak = max(1, warmup or int(0.3 * total))
        if step < peak:
            return 0.04 + 0.96 * step / peak
        t = (step - peak) / max(1, total - peak)
        return max(0.0, 1.0 - t)
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied); what the run evaluates.

    ``every``: update every N steps; ``ramp="cubic"``: the decay at step t of T is
    ``decay * (t / T) ** 3`` (so early updates follow the model closely); ``lookahead``: after
    each update the model continues from the averaged weights. airbench's Lookahead is
    ``decay=0.95 ** 5, every=5, ramp="cubic", lookahead=True``; FixMatch's EMA is
    ``decay=0.999`` every step.
    """

    def __init__(self, model: nn.Module, decay: float, *, every: int = 1, ramp: str = "none",
                 lookahead: bool = False, total_steps: int = 1) -> None:
        self.decay, self.every, self.ramp, self.lookahead = decay, every, ramp, lookahead
        self.total_steps = max(1, total_steps)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, steps: int) -> float:
        """The decay of the update after ``steps`` optimiser steps."""
        if self.ramp == "cubic":
            return self.decay * (min(steps, self.total_steps) / self.total_steps) ** 3
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, steps: int = 1) -> None:
        """Average ``model`` in after its ``steps``-th optimiser step (skipped between every-th steps)."""
        if steps % self.every:
            return
        ema_p = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, params, 1.0 - self.decay_at(steps))
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        if self.lookahead:
            torch._foreach_copy_(params, ema_p)


def param_groups(net: nn.Module, o: OptimConfig) -> list[dict[str, Any]]:
    """SGD parameter groups, each with its ``base_lr`` (the schedule scales it) and weight decay.

    - ``no_decay_bn_bias``: the parameters of one dimension or less (BatchNorm weights and
      biases, every bias) get no weight decay (as FixMatch-pytorch and USB do);
    - ``bias_lr_scale``: the BatchNorm biases' learning rate times this, with their weight
      decay per step unchanged (airbench: 64);
    - ``decoupled``: ``lr`` and ``weight_decay`` are airbench's per-1,024-example values,
      independent of the momentum: with ``k = 1024 (1 + 1 / (1 - momentum))``, the step is
      ``lr · batch / k`` and the decay per step ``weight_decay · batch / k`` (camssl's losses
      are batch means, airbench's are sums).
    """
    lr, decay_per_step = o.lr, o.lr * o.weight_decay
    if o.decoupled:
        k = 1024 * (1 + 1 / (1 - o.momentum))
        lr, decay_per_step = o.lr * o.batch_size / k, o.weight_decay * o.batch_size / k
    params = [p for p in net.parameters()]
    norm_bias = {id(m.bias) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.bias is not None} if o.bias_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in params:
        key = (id(p) in norm_bias, o.no_decay_bn_bias and p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (scaled, plain), ps in groups.items():
        group_lr = lr * (o.bias_lr_scale if scaled else 1.0)
        wd = 0.0 if plain else (decay_per_step / group_lr if o.decoupled or scaled else o.weight_decay)
        out.append({"params": ps, "base_lr": group_lr, "lr": group_lr, "weight_decay": wd})
    return out
