"""``supervised``: the baseline, alpha*L_S on the labeled batch only.

Same augmentation (``labeled_view``), model, schedule and number of steps as the
semi-supervised methods, so the comparison is fair.
"""

from __future__ import annotations

from dataclasses import dataclass

from camssl.methods.base import Batch, Method, MethodConfig, StepContext, StepOutput, register


@dataclass
class SupervisedConfig(MethodConfig):
    name: str = "supervised"


@register
class Supervised(Method):
    name = "supervised"
    Config = SupervisedConfig
    summary = "α·L_S on the labeled batch (the baseline)"
    bench_variants = {"supervised": {}}

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        view = ctx.view(ctx.labeled_view, batch.x_l)
        loss_s, metrics = self.supervised(ctx.model(view.images), batch.y_l)
        return StepOutput(self.cfg.alpha * loss_s, metrics)
