"""``vat``: virtual adversarial training (Miyato et al., arXiv 1704.03976), optionally + entropy minimisation.

L = α·L_S + vat.weight(t)·L_VAT + vat.entmin_weight·L_ent on the unlabeled weak view
(:mod:`camssl.methods.vat_term`). p(x) comes from a forward of the unlabeled weak view
alone, not concatenated with the labeled batch: with BatchNorm in train mode the batch's
composition changes the logits, and the power iteration needs exactly the logits of the
batch it perturbs. *camssl's choices*: the clean unlabeled pass updates the BatchNorm
statistics like every camssl method's unlabeled forwards, and the labeled and unlabeled
batches take separate forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from camssl.methods.base import Batch, Method, MethodConfig, StepContext, StepOutput, register
from camssl.methods.vat_term import VATSettings, vat_terms


@dataclass
class VATConfig(MethodConfig):
    name: str = "vat"
    vat: VATSettings = field(default_factory=VATSettings)


@register
class VAT(Method):
    name = "vat"
    Config = VATConfig
    summary = "α·L_S + w·L_VAT (+ L_ent) on the unlabeled weak view (Miyato et al.)"
    uses_unlabeled = True
    log_metrics = ("loss_s", "loss_vat", "loss_ent", "pl_acc")
    bench_variants = {"vat": {}}

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        assert batch.x_u is not None
        s = self.cfg.vat
        labeled, weak, _ = ctx.ssl_views(batch, "weak")  # the strong view is drawn (and unused) like in every method
        loss_s, metrics = self.supervised(ctx.model(labeled.images), batch.y_l)
        logits_u = ctx.model(weak.images)
        terms = vat_terms(s, ctx, weak.images, logits_u)
        w = s.weight_at(ctx.epoch)
        loss = self.cfg.alpha * loss_s + w * terms["loss_vat"] + s.entmin_weight * terms["loss_ent"]
        metrics.update(loss_vat=terms["loss_vat"].detach(), loss_ent=terms["loss_ent"].detach(),
                       vat_weight=torch.tensor(w))
        if batch.y_u is not None:
            metrics["pl_acc"] = (logits_u.argmax(1) == batch.y_u).float().mean()
        return StepOutput(loss, metrics)
