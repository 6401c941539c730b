"""The VAT term (Miyato et al., arXiv 1704.03976), with entropy minimisation, as a component of ``vat`` and ``lga``.

Its settings are the ``method.vat`` section. L_VAT = :func:`camssl.losses.vat_loss`:
KL(p(x) || p(x + r_adv)), p(x) detached, r_adv of norm ``eps`` found by ``power_iters``
power iterations from a random direction of norm ``xi``, drawn from the run's augmentation
generator; the perturbed passes do not update the BatchNorm running statistics. L_ent = the
mean entropy of p(x) (VAT + EntMin of Oliver et al. 2018 with 0.06; off by default).

Defaults: eps 6, xi 1e-6 and one power iteration are those of Miyato et al. for CIFAR-10,
of Oliver et al. 2018 and of USB; weight 0.3 is Oliver et al.'s consistency coefficient
(USB uses 1.0 with a warm-up over 40% of training). *camssl's choice*: the 5-epoch linear
ramp. At xi = 1e-6 the probe is at float32 rounding level, so one power iteration gives a
noisy direction; still far more adversarial than a random one (tests/test_vat.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from camssl.checks import at_least, integer_at_least, positive
from camssl.losses import entropy, vat_loss
from camssl.methods.base import StepContext
from camssl.methods.parts import ramp


@dataclass
class VATSettings:
    """``method.vat``: L_VAT (and L_ent) on the unlabeled weak view."""

    weight: float = 0.3  # weight of L_VAT (Oliver et al. 2018: 0.3; USB: 1.0)
    eps: float = 6.0  # norm of r_adv per image, in normalised-input units (Miyato, Oliver, USB: 6 on CIFAR-10)
    xi: float = 1e-6  # norm of the power iteration's probe (Miyato, Oliver, USB: 1e-6)
    power_iters: int = 1  # power iterations (Miyato: 1 is enough)
    entmin_weight: float = 0.0  # entropy minimisation on the unlabeled view (VAT+EntMin, Oliver et al.: 0.06)
    ramp_epochs: float = 5.0  # camssl's choice: linear ramp-up of the weight over this many epochs

    def validate(self, prefix: str) -> None:
        for key in ("weight", "eps", "entmin_weight", "ramp_epochs"):
            at_least(f"{prefix}.{key}", getattr(self, key), 0)
        integer_at_least(f"{prefix}.power_iters", self.power_iters, 1)
        positive(f"{prefix}.xi", self.xi)

    @property
    def active(self) -> bool:
        return self.weight > 0 or self.entmin_weight > 0

    def weight_at(self, epoch: float) -> float:
        return self.weight * ramp(epoch, self.ramp_epochs)


def vat_terms(s: VATSettings, ctx: StepContext, x_u: Tensor, logits_u: Tensor) -> dict[str, Tensor]:
    """L_VAT and L_ent of the unlabeled images ``x_u`` whose own forward gave ``logits_u``."""
    out = {"loss_ent": entropy(logits_u).mean()}
    if s.weight > 0:
        out["loss_vat"] = vat_loss(ctx.model, x_u, logits_u, xi=s.xi, eps=s.eps, power_iters=s.power_iters,
                                   generator=ctx.generator)
    else:
        out["loss_vat"] = torch.zeros((), device=logits_u.device)
    return out
