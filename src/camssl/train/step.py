"""The training step, shared by the trainer and the benchmark (``camssl bench`` times this code)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from camssl.augment import Augmenter
from camssl.methods import Batch, Method, StepContext, StepOutput
from camssl.train.schedule import EMA

Mark = Callable[[str], contextlib.AbstractContextManager[Any]]


@contextlib.contextmanager
def _no_mark(name: str) -> Iterator[None]:
    yield


class Stepper:
    """One optimisation step: the method's loss under autocast, backward, optimiser step, EMA.

    ``model`` is what the method calls (DistributedDataParallel around ``net`` with several
    processes); ``net`` the bare model (its EMA is updated). ``amp_dtype`` None runs in
    full precision; float16 uses ``scaler``.
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        optimizer: torch.optim.Optimizer,
        augmenter: Augmenter,
        generator: torch.Generator,
        *,
        net: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        ema: EMA | None = None,
        amp_dtype: torch.dtype | None = None,
        labeled_view: str = "weak",
        channels_last: bool = False,
    ) -> None:
        self.model = model
        self.net = net if net is not None else model
        self.method = method
        self.optimizer = optimizer
        self.augmenter = augmenter
        self.generator = generator
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
        self.ema = ema
        self.amp_dtype = amp_dtype
        self.labeled_view = labeled_view
        self.channels_last = channels_last

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        device = next(self.net.parameters()).device.type
        return torch.autocast(device, dtype=self.amp_dtype)

    def context(self, epoch: float = 0.0, step: int = 0) -> StepContext:
        return StepContext(
            model=self.model,
            augmenter=self.augmenter,
            generator=self.generator,
            epoch=epoch,
            labeled_view=self.labeled_view,
            channels_last=self.channels_last,
            step=step,
        )

    def __call__(
        self,
        batch: Batch,
        *,
        epoch: float = 0.0,
        step: int = 0,
        check: Callable[[StepOutput], None] | None = None,
        mark: Mark | None = None,
        wrap: Callable[[StepContext], Any] | None = None,
    ) -> StepOutput:
        """Run one step on ``batch``; ``check(out)`` runs before the backward (e.g. a NaN check).

        ``mark`` (e.g. ``torch.profiler.record_function``) names the phases ``step.method``,
        ``step.backward`` and ``step.optimizer`` in a profile; ``wrap`` may wrap the context.
        """
        mark = mark or _no_mark
        ctx = self.context(epoch, step)
        if wrap is not None:
            ctx = wrap(ctx)
        with self.autocast(), mark("step.method"):
            out = self.method.step(ctx, batch)
        if check is not None:
            check(out)
        with mark("step.backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
        with mark("step.optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema:
                self.ema.update(self.net, step + 1)
        self.method.after_step(ctx, batch, out)
        return out
