"""``pseudo_label``: the paper's L_P, and the ablation alpha*L_S + beta*L_P (Table II).

L_P = -sum_c p_c(anchor) * log f_c(strong), the cross-entropy between the detached
prediction on the anchor view (the original image by default, as in the paper, or the
weak view) used as a soft target and the prediction on the strong view. An optional
confidence threshold (FixMatch style) keeps only unlabeled samples whose anchor softmax
maximum reaches it; the loss is averaged over the whole unlabeled batch, so masked
samples count as zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camssl.methods.base import Batch, Method, StepContext, StepOutput, register


def soft_cross_entropy(target_probs: Tensor, logits: Tensor) -> Tensor:
    """Per-sample -sum_c q_c log softmax(logits)_c (fp32)."""
    return -(target_probs.float() * F.log_softmax(logits.float(), dim=1)).sum(1)


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
    uses_unlabeled = True

    def confidence_mask(self, probs: Tensor) -> Tensor:
        if self.cfg.threshold <= 0:
            return torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
        return probs.max(1).values >= self.cfg.threshold

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        assert batch.x_u is not None
        n_l = batch.x_l.shape[0]
        labeled, anchor, strong = ctx.ssl_views(batch, self.cfg.anchor)
        with torch.no_grad():  # the target is detached: no graph needed for its forward
            probs = F.softmax(ctx.model(anchor.images).float(), dim=1)
        logits = ctx.model(torch.cat([labeled.images, strong.images]))
        logits_l, logits_u = logits[:n_l], logits[n_l:]
        loss_s = self.supervised_loss(logits_l, batch.y_l)
        mask = self.confidence_mask(probs)
        loss_p = (soft_cross_entropy(probs, logits_u) * mask).mean()
        loss = self.cfg.alpha * loss_s + self.cfg.beta * loss_p
        metrics = {
            "loss_s": loss_s.detach(),
            "loss_p": loss_p.detach(),
            "train_acc": (logits_l.argmax(1) == batch.y_l).float().mean(),
            **unlabeled_diagnostics(probs, mask, batch.y_u),
        }
        return StepOutput(loss, metrics)
