"""``vat``: virtual adversarial training (Miyato et al., arXiv 1704.03976), optionally + entropy minimisation.

L = alpha*L_S + vat_weight(t)*L_VAT + entmin_weight*L_ent on the unlabeled weak view:

- L_VAT = :func:`camssl.losses.vat_loss`: KL(p(x) || p(x + r_adv)), p(x) detached, r_adv
  of norm ``vat_eps`` found by ``vat_power_iters`` power iterations from a random
  direction of norm ``vat_xi``, drawn from the run's augmentation generator; the
  perturbed passes do not update the BatchNorm running statistics;
- p(x) comes from a forward of the unlabeled weak view alone (not concatenated with the
  labeled batch: with BatchNorm in train mode the batch's composition changes the
  logits, and the power iteration needs exactly the logits of the batch it perturbs);
- L_ent = mean entropy of p(x) (VAT + EntMin of Oliver et al. 2018 with 0.06; off by default);
- vat_weight ramps up linearly over ``rampup_epochs``.

Defaults: eps 6, xi 1e-6, one power iteration are those of Miyato et al. for CIFAR-10,
of Oliver et al. 2018 and of USB (semilearn/algorithms/vat); vat_weight 0.3 is Oliver et
al.'s consistency coefficient (USB uses 1.0 with a warm-up over 40% of training).
*camssl's choices*: the 5-epoch linear ramp (camssl's ramps are in epochs), the clean
unlabeled pass updates the BatchNorm statistics like every camssl method's unlabeled
forwards (USB freezes it too), and the labeled and unlabeled batches take separate
forwards. Note: at xi = 1e-6 the perturbation is at float32 rounding level, so one power
iteration gives a noisy direction; it is still far more adversarial than a random one
(tests/test_vat.py measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from camssl.config import MethodConfig, at_least
from camssl.errors import ConfigError
from camssl.losses import entropy, vat_loss
from camssl.methods.base import Batch, Method, StepContext, StepOutput, register


@dataclass
class VATConfig(MethodConfig):
    name: str = "vat"
    vat_weight: float = 0.3  # weight of L_VAT (Oliver et al. 2018: 0.3; USB: 1.0)
    vat_eps: float = 6.0  # norm of r_adv per image, in normalised-input units (Miyato, Oliver, USB: 6 on CIFAR-10)
    vat_xi: float = 1e-6  # norm of the power iteration's probe (Miyato, Oliver, USB: 1e-6)
    vat_power_iters: int = 1  # power iterations (Miyato: 1 is enough)
    entmin_weight: float = 0.0  # entropy minimisation on the unlabeled view (VAT+EntMin, Oliver et al.: 0.06)
    rampup_epochs: float = 5.0  # camssl's choice: linear ramp-up of the unlabeled weights over this many epochs

    def validate(self) -> None:
        super().validate()
        for key in ("vat_weight", "vat_eps", "entmin_weight", "rampup_epochs"):
            at_least(f"method.{key}", getattr(self, key), 0)
        at_least("method.vat_power_iters", self.vat_power_iters, 1)
        if not self.vat_xi > 0:
            raise ConfigError(f"method.vat_xi={self.vat_xi} is invalid: must be > 0 (e.g. 1e-6)")


def ramp(epoch: float, epochs: float) -> float:
    """Linear ramp-up factor in [0, 1] at training progress ``epoch`` (1 when ``epochs`` is 0)."""
    return min(1.0, epoch / epochs) if epochs > 0 else 1.0


def vat_terms(cfg: VATConfig, ctx: StepContext, x_u: Tensor, logits_u: Tensor) -> dict[str, Tensor]:
    """L_VAT and L_ent of the unlabeled images ``x_u`` whose own forward gave ``logits_u``."""
    model: nn.Module = ctx.model
    out = {"loss_ent": entropy(logits_u).mean()}
    if cfg.vat_weight > 0:
        out["loss_vat"] = vat_loss(model, x_u, logits_u, xi=cfg.vat_xi, eps=cfg.vat_eps,
                                   power_iters=cfg.vat_power_iters, generator=ctx.generator)
    else:
        out["loss_vat"] = torch.zeros((), device=logits_u.device)
    return out


@register
class VAT(Method):
    name = "vat"
    Config = VATConfig
    uses_unlabeled = True
    log_metrics = ("loss_s", "loss_vat", "loss_ent", "pl_acc")

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        assert batch.x_u is not None
        cfg = self.cfg
        labeled, weak, _ = ctx.ssl_views(batch, "weak")  # the strong view is drawn (and unused) like in every method
        logits_l = ctx.model(labeled.images)
        loss_s = self.supervised_loss(logits_l, batch.y_l)
        logits_u = ctx.model(weak.images)
        terms = vat_terms(cfg, ctx, weak.images, logits_u)
        w = cfg.vat_weight * ramp(ctx.epoch, cfg.rampup_epochs)
        loss = cfg.alpha * loss_s + w * terms["loss_vat"] + cfg.entmin_weight * terms["loss_ent"]
        metrics = {
            "loss_s": loss_s.detach(),
            "loss_vat": terms["loss_vat"].detach(),
            "loss_ent": terms["loss_ent"].detach(),
            "vat_weight": torch.tensor(w),
            "train_acc": (logits_l.argmax(1) == batch.y_l).float().mean(),
        }
        if batch.y_u is not None:
            metrics["pl_acc"] = (logits_u.argmax(1) == batch.y_u).float().mean()
        return StepOutput(loss, metrics)
