"""Per-step learning-rate schedules, the EMA of the weights, and the optimiser's parameter groups."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


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
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)


def param_groups(net: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict[str, Any]]:
    """One group with ``weight_decay``, or (``no_decay_bn_bias``) a second, undecayed group.

    The undecayed group holds the parameters of one dimension or less: BatchNorm weights
    and biases and every bias (as FixMatch-pytorch and USB do).
    """
    params = list(net.parameters())
    if not no_decay_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    plain = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
