"""``gradcam``: Grad-CAM consistency training (Lee & Cho, arXiv 2108.13673).

L = alpha*L_S + beta*L_P + gamma*L_G. L_S and L_P are exactly those of
:mod:`camssl.methods.pseudo_label` (so ``gamma=0`` *is* the paper's ablation), and

L_G = mean over unlabeled samples of  d( N(E_strong), N(T(E_anchor)) )

- class: the pseudo-label of the anchor view (argmax of its prediction) for BOTH views;
- target: the anchor's Grad-CAM map at each target layer, carried into the strong view
  through the augmentation's exact per-sample geometry (:func:`camssl.augment.carry`)
  at input resolution, detached; pixels of the strong view that come from outside the
  anchor image are masked out;
- prediction: the strong view's Grad-CAM map from the SAME forward pass that gives L_S
  and L_P (batched, no extra forward), differentiable (``grad_mode``: ``full`` or
  ``detach-weights``), upsampled to input resolution;
- N: per-map normalisation (``norm``), d: MSE or L1 (``distance``) over valid pixels;
- the optional confidence threshold selects the samples of L_P and L_G alike;
- gamma ramps up linearly over ``gamma_rampup_epochs``.

With several target layers, L_G is the mean over layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camssl.augment import View, carry
from camssl.cam import cam_layer, grad_cam, normalize_maps, upsample_maps
from camssl.methods.base import Batch, StepContext, StepOutput, register
from camssl.methods.pseudo_label import PseudoLabel, soft_cross_entropy, unlabeled_diagnostics


def aligned_maps(
    anchor_maps: Tensor, strong_maps: Tensor, anchor: View, strong: View, size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """(target, prediction, valid), each B×1×H×W at input resolution in the strong view's frame.

    ``anchor_maps``/``strong_maps`` are B×h×w maps of the anchor and strong views; the
    anchor's are carried through ``strong.theta`` (relative to ``anchor.theta``).
    """
    target, valid = carry(anchor_maps[:, None], strong.theta, size, src_theta=anchor.theta)
    pred = upsample_maps(strong_maps, size)[:, None].float()
    return target, pred, valid


def map_distance(target: Tensor, pred: Tensor, valid: Tensor, norm: str, distance: str) -> Tensor:
    """Per-sample distance (B,) between the maps, both normalised over the valid pixels only."""
    t = normalize_maps(target.float(), norm, mask=valid)
    p = normalize_maps(pred.float(), norm, mask=valid)
    diff = (p - t).abs() if distance == "l1" else (p - t) ** 2
    return (diff * valid).sum((1, 2, 3)) / valid.sum((1, 2, 3)).clamp_min(1.0)


@register
class GradCAMConsistency(PseudoLabel):
    name = "gradcam"
    uses_unlabeled = True

    def taps(self) -> list[str]:
        return list(self.cfg.layers)

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
        maps_a = grad_cam(logits_a, feats_a, classes, mode="detach-weights", model=ctx.model)
        maps_a = {k: v.detach() for k, v in maps_a.items()}
        del logits_a, feats_a

        # labeled + strong in one forward; strong maps from this very forward
        logits, feats = ctx.model(torch.cat([labeled.images, strong.images]), taps=layers)
        logits_l, logits_u = logits[:n_l], logits[n_l:]
        rows = torch.cat([torch.full((n_l,), -1, device=classes.device, dtype=classes.dtype), classes])
        maps_s = grad_cam(logits, feats, rows, mode=cfg.grad_mode, model=ctx.model)

        mask = self.confidence_mask(probs)
        loss_s = self.supervised_loss(logits_l, batch.y_l)
        loss_p = (soft_cross_entropy(probs, logits_u) * mask).mean()
        per_layer = []
        for name in layers:
            target, pred, valid = aligned_maps(maps_a[name], maps_s[name][n_l:], anchor, strong, size)
            per_layer.append(map_distance(target, pred, valid, cfg.norm, cfg.distance))
        loss_g = (torch.stack(per_layer).mean(0) * mask).mean()
        gamma = self.gamma_at(ctx.epoch)
        loss = cfg.alpha * loss_s + cfg.beta * loss_p + gamma * loss_g
        metrics = {
            "loss_s": loss_s.detach(),
            "loss_p": loss_p.detach(),
            "loss_g": loss_g.detach(),
            "gamma": torch.tensor(gamma),
            "train_acc": (logits_l.argmax(1) == batch.y_l).float().mean(),
            **unlabeled_diagnostics(probs, mask, batch.y_u),
        }
        return StepOutput(loss, metrics)
