"""Pieces the semi-supervised methods share: the ramp, and pseudo-labels with their confidence mask.

- :func:`ramp` — the one ramp of every weight that grows over training (L_G's γ, L_cam's λ,
  VAT's and LGA's unlabeled weights): linear, or a step at the end of the ramp;
- :class:`PseudoSettings` — the ``method.pseudo`` section: how the anchor view's prediction
  becomes a target for the strong view (soft probabilities as in Lee & Cho's L_P, or
  FixMatch's hard, thresholded argmax);
- :func:`pseudo_labels`, :func:`pseudo_loss`, :func:`unlabeled_diagnostics` — the functions
  of that section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from camssl.checks import at_least, check_bool, fraction
from camssl.errors import ConfigError
from camssl.losses import confidence_mask, soft_cross_entropy

RampKind = Literal["linear", "step"]


def ramp(epoch: float, epochs: float, kind: str = "linear") -> float:
    """The factor in [0, 1] of a weight at training progress ``epoch`` (fractional epochs).

    ``linear``: ``min(1, epoch / epochs)``; ``step``: 0 before ``epochs``, then 1. With
    ``epochs`` 0 the weight is on from the start (factor 1).
    """
    if epochs <= 0:
        return 1.0
    if kind == "step":
        return 1.0 if epoch >= epochs else 0.0
    return min(1.0, epoch / epochs)


@dataclass
class PseudoSettings:
    """``method.pseudo``: the unlabeled loss on the strong view, with the anchor's prediction as its target.

    ``target: soft`` is Lee & Cho's L_P (the anchor's probabilities as a soft target);
    ``hard`` is FixMatch's (the anchor's argmax, cross-entropy). Either way samples below
    ``threshold`` (the anchor's softmax maximum) count as zero in the batch mean.
    """

    weight: float = 1.0  # β of L_P (Lee & Cho) / λ_u (FixMatch)
    threshold: float = 0.0  # confidence threshold τ on the anchor's softmax maximum (0 = off)
    anchor: Literal["original", "weak"] = "original"  # view whose prediction (and map) is the target
    target: Literal["soft", "hard"] = "soft"  # soft probabilities (L_P) or the hard argmax (FixMatch)
    # camssl's option, not FixMatch's: FlexMatch's per-class thresholds τ·M(β_c) (Zhang et al. 2021; camssl.methods.flex)
    flex: bool = False
    flex_warmup: bool = True  # FlexMatch's threshold warm-up (β over max(max σ, unused images))

    def validate(self, prefix: str) -> None:
        at_least(f"{prefix}.weight", self.weight, 0)
        fraction(f"{prefix}.threshold", self.threshold)
        check_bool(f"{prefix}.flex", self.flex)
        check_bool(f"{prefix}.flex_warmup", self.flex_warmup)
        if self.flex and self.threshold <= 0:
            raise ConfigError(f"{prefix}.flex=true scales the threshold per class: set {prefix}.threshold > 0 "
                              "(FlexMatch: 0.95)")


@dataclass
class PseudoLabels:
    """The anchor view's detached prediction, its argmax and the confidence mask of one step."""

    probs: Tensor  # (B, C) float32 softmax of the anchor view, detached
    classes: Tensor  # (B,) argmax: the pseudo-label (also the class of the Grad-CAM maps)
    mask: Tensor  # (B,) bool: confidence at least the threshold


def pseudo_labels(anchor_logits: Tensor, threshold: float | Tensor) -> PseudoLabels:
    """Probabilities, pseudo-labels and confidence mask of the anchor's logits (detached).

    ``threshold``: one τ for every class, or a (C,) tensor of per-class thresholds (each
    prediction is held to its own class's).
    """
    probs = F.softmax(anchor_logits.detach().float(), dim=1)
    if isinstance(threshold, Tensor):
        conf, classes = probs.max(1)
        return PseudoLabels(probs, classes, conf >= threshold.to(conf)[classes])
    return PseudoLabels(probs, probs.argmax(1), confidence_mask(probs, threshold))


def pseudo_loss(pl: PseudoLabels, logits_u: Tensor, target: str) -> Tensor:
    """Mean over the unlabeled batch of the masked cross-entropy of ``logits_u`` against the pseudo-labels."""
    if target == "hard":
        per_sample = F.cross_entropy(logits_u.float(), pl.classes, reduction="none")
    else:
        per_sample = soft_cross_entropy(pl.probs, logits_u)
    return (per_sample * pl.mask).mean()


def unlabeled_diagnostics(pl: PseudoLabels, y_true: Tensor | None) -> dict[str, Tensor]:
    """Mask rate, and pseudo-label accuracy (all and above the threshold) when the true labels are known."""
    out = {"mask_rate": pl.mask.float().mean()}
    if y_true is not None:
        correct = (pl.classes == y_true).float()
        out["pl_acc"] = correct.mean()
        out["pl_acc_masked"] = (correct * pl.mask).sum() / pl.mask.sum().clamp_min(1)
    return out


def no_grad_logits(model: torch.nn.Module, images: Tensor) -> Tensor:
    """A forward without a graph (the anchor's prediction when no map of it is needed)."""
    with torch.no_grad():
        return model(images)
