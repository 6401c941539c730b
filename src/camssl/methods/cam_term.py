"""L_cam, the CAM-loss term (Wang et al., ICCV 2021), as a component any method adds to its forward.

Its settings are the ``method.cam`` section. ``cam_loss`` (supervised CE + λ·L_cam) is
built from :meth:`CamTerm.labeled_loss`; in the semi-supervised methods (``pseudo_label``,
``gradcam``, ``fixmatch``) it is a :class:`~camssl.methods.ssl.Term` (a *camssl extension*:
L_cam on the labeled rows with the ground truth and on the strong rows with the anchor's
pseudo-label above ``threshold``), tapping the model's ``cam_layer`` in the forward the
step already does. With ``weight = 0`` nothing of this runs.

The loss itself is :func:`camssl.losses.cam_loss`; see there for the gradient routing
(W never gets a gradient from L_cam; ``target``: ``detach`` or ``detach-w``).

*camssl decisions* (only the paper's abstract is available): N = per-sample min–max over
the map; a step warm-up of 10 epochs with λ = 0 (the only public, unofficial
implementation's schedule, for 30 epochs; scale ``ramp_epochs`` to about a third of
``optim.epochs`` for other budgets). docs/results-camloss.md has the measurements behind
the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from camssl.cam import NORMALIZATIONS, cam_layer, fc_weight
from camssl.checks import at_least, fraction
from camssl.errors import ConfigError
from camssl.losses import CAM_TARGETS, cam_loss, confidence_mask
from camssl.methods.base import StepContext
from camssl.methods.parts import RampKind, ramp
from camssl.methods.ssl import SSLForward, Term


@dataclass
class CamSettings:
    """``method.cam``: the L_cam term (off with weight 0)."""

    weight: float = 0.0  # λ of L_cam (0 = off)
    ramp_epochs: float = 10.0  # provisional (unofficial code: λ = 0 for 10 of 30 epochs); only with weight > 0
    ramp: RampKind = "step"  # step: λ = 0 until ramp_epochs, then weight; linear: ramp up over them
    norm: Literal[NORMALIZATIONS] = "minmax"  # type: ignore[valid-type]  # N: per-sample min–max over the map (camssl)
    target: Literal[CAM_TARGETS] = "detach"  # type: ignore[valid-type]  # detach: features and W; detach-w: only W
    # semi-supervised methods only: L_cam also on the unlabeled rows, with confident pseudo-labels
    threshold: float = 0.95  # provisional (FixMatch's value): anchor confidence for L_cam on an unlabeled image
    unlabeled: bool = True  # false: L_cam on the labeled rows only

    def validate(self, prefix: str) -> None:
        at_least(f"{prefix}.weight", self.weight, 0)
        at_least(f"{prefix}.ramp_epochs", self.ramp_epochs, 0)
        fraction(f"{prefix}.threshold", self.threshold)


class CamTerm(Term):
    """λ(t)·L_cam of a method's forward at the model's ``cam_layer``."""

    section = "cam"
    metrics = ("loss_cam",)
    settings: CamSettings

    def weight_at(self, epoch: float) -> float:
        s = self.settings
        return s.weight * ramp(epoch, s.ramp_epochs, s.ramp)

    def main_taps(self, model: nn.Module) -> list[str]:
        layer = cam_layer(model)
        if not layer:
            raise ConfigError("method.cam.weight > 0 needs a model with a cam_layer followed by a linear fc "
                              "(a camssl model; airnet with model.pool=avg)")
        return [layer]

    def labeled_loss(self, model: nn.Module, feats: dict[str, Tensor], classes: Tensor, rows: slice = slice(None),
                     mask: Tensor | None = None) -> Tensor:
        """L_cam of ``feats[cam_layer][rows]`` against the CAM of ``classes`` (masked samples count 0)."""
        return cam_loss(feats[cam_layer(model)][rows], fc_weight(model), classes, norm=self.settings.norm,
                        target=self.settings.target, mask=mask)

    def loss(self, ctx: StepContext, f: SSLForward) -> tuple[Tensor, float, dict[str, Tensor]]:
        """L_cam(labeled rows, y) + L_cam(strong rows, pseudo-label ≥ threshold), and λ(t)."""
        s = self.settings
        assert f.pl is not None
        lam = self.weight_at(ctx.epoch)
        loss_l = self.labeled_loss(ctx.model, f.feats, f.y_l, slice(0, f.n_l))
        metrics = {"loss_cam": loss_l.detach(), "cam_weight": torch.tensor(lam)}
        total = loss_l
        if s.unlabeled:
            mask = confidence_mask(f.pl.probs, s.threshold)
            loss_u = self.labeled_loss(ctx.model, f.feats, f.pl.classes, slice(f.n_l, None), mask=mask)
            total = total + loss_u
            metrics.update(loss_cam_u=loss_u.detach(), cam_mask_rate=mask.float().mean())
        return total, lam, metrics
