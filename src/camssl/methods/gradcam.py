"""``gradcam``: Grad-CAM consistency training (Lee & Cho, arXiv 2108.13673).

L = alpha*L_S + beta*L_P + gamma*L_G. L_S and L_P are exactly those of
:mod:`camssl.methods.pseudo_label` (so ``gamma=0`` *is* the paper's ablation), and L_G
is :func:`camssl.losses.gradcam_consistency`:

- class: the pseudo-label of the anchor view (argmax of its prediction) for BOTH views;
- target: the anchor's Grad-CAM map at each target layer, carried into the strong view
  through the augmentation's exact per-sample geometry at input resolution, detached;
  pixels of the strong view that come from outside the anchor image are masked out;
- prediction: the strong view's Grad-CAM map from the SAME forward pass that gives L_S
  and L_P (batched, no extra forward), differentiable (``grad_mode``: ``full`` or
  ``detach-weights``), upsampled to input resolution;
- N: per-map normalisation (``norm``), d over the valid pixels (``distance``): ``cosine``
  (camssl's default: 1 − cosine similarity, which gives a blank or shrunken map no reward,
  measured in docs/default-run.md) or the paper's ``mse`` (or ``l1``);
- pairs whose carried target map is blank are left out (``skip_blank_targets``, camssl's
  guard against collapsed maps, measured in docs/default-run.md; not in the paper), and
  their share is logged as ``blank_targets``;
- the optional confidence threshold selects the samples of L_P and L_G alike;
- gamma ramps up linearly over ``gamma_rampup_epochs``.

With several target layers, L_G is the mean over layers. ``method.cam_weight > 0`` adds the
CAM-loss term λ·L_cam on the labeled + strong forward (:mod:`camssl.methods.cam_term`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from camssl.cam import GRAD_MODES, NORMALIZATIONS, cam_layer
from camssl.config import at_least
from camssl.errors import ConfigError
from camssl.losses import DISTANCES, confidence_mask, gradcam_consistency, gradcam_targets, soft_cross_entropy
from camssl.methods.base import Batch, StepContext, StepOutput, register
from camssl.methods.pseudo_label import PseudoLabel, PseudoLabelConfig, unlabeled_diagnostics


@dataclass
class GradCAMConfig(PseudoLabelConfig):
    name: str = "gradcam"
    gamma: float = 1.0  # weight of the Grad-CAM consistency loss L_G
    layers: list[str] = field(default_factory=lambda: ["layer3"])  # Grad-CAM target layer(s)
    grad_mode: Literal[GRAD_MODES] = "detach-weights"  # type: ignore[valid-type]  # "full": L_G also trains the layers after the map (double backward)
    norm: Literal[NORMALIZATIONS] = "minmax"  # type: ignore[valid-type]
    distance: Literal[DISTANCES] = "cosine"  # type: ignore[valid-type]  # camssl's default (no reward for blank maps); the paper's: mse
    gamma_rampup_epochs: float = 0.0  # linear ramp-up of gamma over this many epochs
    skip_blank_targets: bool = True  # camssl's guard against collapsed maps: pairs with a blank target map are left out of L_G

    def validate(self) -> None:
        super().validate()
        for key in ("gamma", "gamma_rampup_epochs"):
            at_least(f"method.{key}", getattr(self, key), 0)
        if not self.layers:
            raise ConfigError("method.layers is empty: name at least one layer, e.g. layer3")

    def cam_layers(self) -> list[str]:
        return list(self.layers)


@register
class GradCAMConsistency(PseudoLabel):
    name = "gradcam"
    Config = GradCAMConfig
    table_role = "gradcam"
    log_metrics = ("loss_s", "loss_p", "loss_g", "loss_cam", "mask_rate", "pl_acc")

    def taps(self) -> list[str]:
        return list(self.cfg.layers)

    def double_backward_layers(self, net: nn.Module) -> list[str]:
        if self.cfg.grad_mode != "full":
            return []
        return [name for name in self.cfg.layers if name != cam_layer(net)]

    def gamma_at(self, epoch: float) -> float:
        ramp = self.cfg.gamma_rampup_epochs
        return self.cfg.gamma * (min(1.0, epoch / ramp) if ramp > 0 else 1.0)

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        assert batch.x_u is not None
        cfg = self.cfg
        n_l = batch.x_l.shape[0]
        size = (batch.x_u.shape[2], batch.x_u.shape[3])
        labeled, anchor, strong = ctx.ssl_views(batch, cfg.anchor)
        layers = self.taps()

        # anchor: prediction (soft target) and Grad-CAM maps of its own argmax, all detached;
        # at the closed-form layer no backward is needed, so no graph is built
        with torch.set_grad_enabled(any(name != cam_layer(ctx.model) for name in layers)):
            logits_a, feats_a = ctx.model(anchor.images, taps=layers)
        probs = F.softmax(logits_a.detach().float(), dim=1)
        classes = probs.argmax(1)
        targets = gradcam_targets(logits_a, feats_a, classes, model=ctx.model)
        del logits_a, feats_a  # the anchor's graph is freed before the second forward

        # labeled + strong in one forward; the strong maps come from this very forward
        taps = layers + [t for t in self.cam_term.taps(ctx.model) if t not in layers]
        logits, feats = ctx.model(torch.cat([labeled.images, strong.images]), taps=taps)
        logits_l, logits_u = logits[:n_l], logits[n_l:]
        mask = confidence_mask(probs, cfg.threshold)
        loss_s = self.supervised_loss(logits_l, batch.y_l)
        loss_p = (soft_cross_entropy(probs, logits_u) * mask).mean()
        loss_g, _, blank = gradcam_consistency(
            targets, logits, feats, anchor.theta, strong.theta, size=size, classes=classes, mask=mask,
            first_row=n_l, mode=cfg.grad_mode, norm=cfg.norm, distance=cfg.distance, model=ctx.model,
            skip_blank_targets=cfg.skip_blank_targets, details=True,
        )
        gamma = self.gamma_at(ctx.epoch)
        loss = cfg.alpha * loss_s + cfg.beta * loss_p + gamma * loss_g
        metrics = {
            "loss_s": loss_s.detach(),
            "loss_p": loss_p.detach(),
            "loss_g": loss_g.detach(),
            "blank_targets": blank.float().mean(),
            "gamma": torch.tensor(gamma),
            "train_acc": (logits_l.argmax(1) == batch.y_l).float().mean(),
            **unlabeled_diagnostics(probs, mask, batch.y_u),
        }
        if self.cam_term.active:
            loss_cam, cam_metrics = self.cam_term.ssl(ctx.model, feats, n_l, batch.y_l, probs, ctx.epoch)
            loss = loss + loss_cam
            metrics.update(cam_metrics)
        return StepOutput(loss, metrics)
