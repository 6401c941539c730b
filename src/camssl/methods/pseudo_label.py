"""``pseudo_label``: the paper's L_P, and the ablation alpha*L_S + beta*L_P (Table II).

L_P = -sum_c p_c(anchor) * log f_c(strong), the cross-entropy between the detached
prediction on the anchor view (the original image by default, as in the paper, or the
weak view) used as a soft target and the prediction on the strong view. An optional
confidence threshold (FixMatch style) keeps only unlabeled samples whose anchor softmax
maximum reaches it; the loss is averaged over the whole unlabeled batch, so masked
samples count as zero.

``method.cam_weight > 0`` adds the CAM-loss term λ·L_cam (:mod:`camssl.methods.cam_term`,
a camssl extension) on the same forward pass; with the default 0 nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from camssl.config import MethodConfig, at_least
from camssl.errors import ConfigError
from camssl.losses import confidence_mask, soft_cross_entropy
from camssl.methods.base import Batch, Method, StepContext, StepOutput, register
from camssl.methods.cam_term import CamTerm, SSLCamTermConfig

Anchor = Literal["original", "weak"]


@dataclass
class PseudoLabelConfig(SSLCamTermConfig):
    name: str = "pseudo_label"
    beta: float = 1.0  # weight of the pseudo-label loss L_P
    threshold: float = 0.0  # confidence threshold on the anchor's softmax (0 = off)
    anchor: Anchor = "original"  # view whose prediction (and map) is the target

    def validate(self) -> None:
        super().validate()
        at_least("method.beta", self.beta, 0)
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"method.threshold={self.threshold} is invalid: must be in [0, 1)")


def unlabeled_diagnostics(probs: Tensor, mask: Tensor, y_true: Tensor | None) -> dict[str, Tensor]:
    """Mask rate and pseudo-label accuracy (all and above threshold) of the anchor's predictions."""
    out = {"mask_rate": mask.float().mean()}
    if y_true is not None:
        correct = (probs.argmax(1) == y_true).float()
        out["pl_acc"] = correct.mean()
        out["pl_acc_masked"] = (correct * mask).sum() / mask.sum().clamp_min(1)
    return out


@register
class PseudoLabel(Method):
    name = "pseudo_label"
    Config = PseudoLabelConfig
    uses_unlabeled = True
    table_role = "ablation"
    log_metrics = ("loss_s", "loss_p", "loss_cam", "mask_rate", "pl_acc")

    def __init__(self, cfg: MethodConfig, *, label_smoothing: float = 0.0) -> None:
        super().__init__(cfg, label_smoothing=label_smoothing)
        self.cam_term = CamTerm(cfg)  # type: ignore[arg-type]  # off (cam_weight 0) unless configured

    @classmethod
    def role_of(cls, cfg: MethodConfig) -> str:
        """With L_cam added (cam_weight > 0) a run is neither the paper's ablation nor its method."""
        return "other" if getattr(cfg, "cam_weight", 0.0) > 0 else cls.table_role

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        assert batch.x_u is not None
        n_l = batch.x_l.shape[0]
        labeled, anchor, strong = ctx.ssl_views(batch, self.cfg.anchor)
        with torch.no_grad():  # the target is detached: no graph needed for its forward
            probs = F.softmax(ctx.model(anchor.images).float(), dim=1)
        taps = self.cam_term.taps(ctx.model)
        images = torch.cat([labeled.images, strong.images])
        logits, feats = ctx.model(images, taps=taps) if taps else (ctx.model(images), {})
        logits_l, logits_u = logits[:n_l], logits[n_l:]
        loss_s = self.supervised_loss(logits_l, batch.y_l)
        mask = confidence_mask(probs, self.cfg.threshold)
        loss_p = (soft_cross_entropy(probs, logits_u) * mask).mean()
        loss = self.cfg.alpha * loss_s + self.cfg.beta * loss_p
        metrics = {
            "loss_s": loss_s.detach(),
            "loss_p": loss_p.detach(),
            "train_acc": (logits_l.argmax(1) == batch.y_l).float().mean(),
            **unlabeled_diagnostics(probs, mask, batch.y_u),
        }
        if self.cam_term.active:
            loss_cam, cam_metrics = self.cam_term.ssl(ctx.model, feats, n_l, batch.y_l, probs, ctx.epoch)
            loss = loss + loss_cam
            metrics.update(cam_metrics)
        return StepOutput(loss, metrics)
