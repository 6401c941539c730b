"""``supervised``: the paper's baseline, alpha*L_S on the labeled batch only.

Same augmentation (``labeled_view``), model, schedule and number of steps as the
semi-supervised methods, so the comparison is fair.
"""

from __future__ import annotations

from dataclasses import dataclass

from camssl.config import MethodConfig
from camssl.methods.base import Batch, Method, StepContext, StepOutput, register


@dataclass
class SupervisedConfig(MethodConfig):
    name: str = "supervised"


@register
class Supervised(Method):
    name = "supervised"
    Config = SupervisedConfig

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        view = ctx.view(ctx.labeled_view, batch.x_l)
        logits = ctx.model(view.images)
        loss_s = self.supervised_loss(logits, batch.y_l)
        acc = (logits.argmax(1) == batch.y_l).float().mean()
        return StepOutput(self.cfg.alpha * loss_s, {"loss_s": loss_s.detach(), "train_acc": acc})
