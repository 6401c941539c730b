"""The CAM-loss term L_cam (Wang et al., ICCV 2021) as a part any method can add to its forward.

``cam_loss`` (supervised CE + λ·L_cam) is built from it, and ``pseudo_label`` / ``gradcam``
add it with ``method.cam_weight > 0`` (a *camssl extension*: L_cam on the labeled rows with
the ground truth and on the strong rows with the anchor's pseudo-label above
``cam_threshold``), tapping the model's ``cam_layer`` in the forward they already do, so
no forward pass is added. With ``cam_weight = 0`` nothing of this runs and those methods
compute exactly what they computed before.

The loss itself is :func:`camssl.losses.cam_loss`; see there for the gradient routing
(W never gets a gradient from L_cam; ``cam_target``: ``detach`` or ``detach-w``).

Defaults (*camssl decisions*): a step warm-up of 10 epochs with λ = 0 (the only public,
unofficial implementation's schedule; it trains 30 epochs like camssl's ``cpu`` preset;
scale ``cam_warmup_epochs`` to about a third of ``optim.epochs`` for other budgets).
``cam_loss`` uses λ = 1 (docs/results-camloss.md: the least harmful λ tried). On
pseudo_label the term is off by default; at λ = 3 it cost −0.78 points [−1.00, −0.55]
(same file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from camssl.cam import NORMALIZATIONS, cam_layer, fc_weight
from camssl.config import MethodConfig, at_least
from camssl.errors import ConfigError
from camssl.losses import CAM_TARGETS, cam_loss, confidence_mask

Warmup = Literal["step", "linear"]


@dataclass
class CamTermConfig(MethodConfig):
    """The L_cam settings (``method.cam_*``); a method's Config derives from this to offer L_cam."""

    cam_weight: float = 0.0  # λ of L_cam (0 = off)
    cam_warmup_epochs: float = 10.0  # provisional (unofficial code: λ = 0 for 10 of 30 epochs); only with cam_weight > 0
    cam_warmup: Warmup = "step"  # step: λ = 0 until cam_warmup_epochs, then cam_weight; linear: ramp up over them
    cam_norm: Literal[NORMALIZATIONS] = "minmax"  # type: ignore[valid-type]  # N: per-sample min–max over the map (camssl)
    cam_target: Literal[CAM_TARGETS] = "detach"  # type: ignore[valid-type]  # detach: features and W; detach-w: only W

    def validate(self) -> None:
        super().validate()
        at_least("method.cam_weight", self.cam_weight, 0)
        at_least("method.cam_warmup_epochs", self.cam_warmup_epochs, 0)


@dataclass
class SSLCamTermConfig(CamTermConfig):
    """L_cam in a semi-supervised method: also on the unlabeled rows, with confident pseudo-labels."""

    cam_threshold: float = 0.95  # provisional (FixMatch's value): anchor confidence for L_cam on an unlabeled image
    cam_unlabeled: bool = True  # false: L_cam on the labeled rows only

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.cam_threshold < 1.0:
            raise ConfigError(f"method.cam_threshold={self.cam_threshold} is invalid: must be in [0, 1)")


class CamTerm:
    """λ(t)·L_cam of a method's forward; ``active`` is False when ``cam_weight`` is 0."""

    def __init__(self, cfg: CamTermConfig) -> None:
        self.cfg = cfg
        self.active = cfg.cam_weight > 0

    def taps(self, model: nn.Module) -> list[str]:
        """The layer to tap in the forward (the model's ``cam_layer``), or none when off."""
        layer = cam_layer(model)
        if self.active and not layer:
            raise ConfigError("method.cam_weight > 0 needs a camssl model (one with a cam_layer and a linear fc)")
        return [layer] if self.active else []

    def weight_at(self, epoch: float) -> float:
        """λ at training progress ``epoch`` (fractional epochs)."""
        cfg, warm = self.cfg, self.cfg.cam_warmup_epochs
        if warm <= 0:
            return cfg.cam_weight
        if cfg.cam_warmup == "linear":
            return cfg.cam_weight * min(1.0, epoch / warm)
        return cfg.cam_weight if epoch >= warm else 0.0

    def loss(self, model: nn.Module, feats: dict[str, Tensor], classes: Tensor, rows: slice = slice(None),
             mask: Tensor | None = None) -> Tensor:
        """L_cam of ``feats[cam_layer][rows]`` against the CAM of ``classes`` (masked samples count 0)."""
        layer = cam_layer(model)
        return cam_loss(feats[layer][rows], fc_weight(model), classes, norm=self.cfg.cam_norm,
                        target=self.cfg.cam_target, mask=mask)

    def ssl(self, model: nn.Module, feats: dict[str, Tensor], n_l: int, y_l: Tensor, probs: Tensor,
            epoch: float) -> tuple[Tensor, dict[str, Tensor]]:
        """λ(t)·(L_cam(labeled rows, y) + L_cam(unlabeled rows, anchor pseudo-label ≥ cam_threshold)).

        ``feats`` come from the forward over ``[labeled; strong]`` (labeled rows first);
        ``probs`` is the anchor view's detached softmax. Returns (weighted loss, metrics).
        """
        cfg = self.cfg
        assert isinstance(cfg, SSLCamTermConfig)
        lam = self.weight_at(epoch)
        loss_l = self.loss(model, feats, y_l, slice(0, n_l))
        metrics = {"loss_cam": loss_l.detach(), "cam_weight": torch.tensor(lam)}
        total = loss_l
        if cfg.cam_unlabeled:
            mask = confidence_mask(probs, cfg.cam_threshold)
            loss_u = self.loss(model, feats, probs.argmax(1), slice(n_l, None), mask=mask)
            total = total + loss_u
            metrics.update(loss_cam_u=loss_u.detach(), cam_mask_rate=mask.float().mean())
        return lam * total, metrics
