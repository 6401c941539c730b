"""L_G, the Grad-CAM consistency term (Lee & Cho, arXiv 2108.13673), as a component of :class:`~camssl.methods.ssl.SemiSupervised`.

Its settings are the ``method.gradcam`` section; the loss is
:func:`camssl.losses.gradcam_consistency`:

- class: the anchor's pseudo-label (argmax of its prediction) for BOTH views;
- target: the anchor's Grad-CAM map at each target layer, carried into the strong view
  through the views' exact per-sample geometry at input resolution, detached; pixels of the
  strong view that come from outside the anchor image are masked out;
- prediction: the strong view's Grad-CAM map from the same forward that gives L_S and the
  unlabeled loss (batched, no extra forward), differentiable (``grad_mode``: ``full`` or
  ``detach-weights``), upsampled to input resolution;
- N: per-map normalisation (``norm``), d over the valid pixels (``distance``): ``cosine``
  (camssl's default: 1 − cosine similarity gives a blank or shrunken map no reward,
  docs/default-run.md) or the paper's ``mse`` (or ``l1``);
- pairs whose carried target map is blank are left out (``skip_blank_targets``, camssl's
  guard against collapsed maps, docs/default-run.md; not in the paper);
- the pseudo-labels' confidence mask selects the samples of L_G too;
- γ = ``weight``, ramped up linearly over ``ramp_epochs``. Several layers: the mean over layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from camssl.cam import GRAD_MODES, NORMALIZATIONS, cam_layer
from camssl.checks import at_least
from camssl.errors import ConfigError
from camssl.losses import DISTANCES, gradcam_consistency, gradcam_targets
from camssl.methods.base import StepContext
from camssl.methods.parts import ramp
from camssl.methods.ssl import SSLForward, Term


@dataclass
class GradCAMSettings:
    """``method.gradcam``: the L_G term (off with weight 0)."""

    weight: float = 1.0  # γ, the weight of L_G
    layers: list[str] = field(default_factory=lambda: ["layer3"])  # Grad-CAM target layer(s)
    grad_mode: Literal[GRAD_MODES] = "detach-weights"  # type: ignore[valid-type]  # "full": L_G also trains the layers after the map (double backward)
    norm: Literal[NORMALIZATIONS] = "minmax"  # type: ignore[valid-type]
    distance: Literal[DISTANCES] = "cosine"  # type: ignore[valid-type]  # camssl's default (no reward for blank maps); the paper's: mse
    ramp_epochs: float = 0.0  # linear ramp-up of γ over this many epochs
    skip_blank_targets: bool = True  # camssl's guard against collapsed maps: pairs with a blank target map are left out

    def validate(self, prefix: str) -> None:
        at_least(f"{prefix}.weight", self.weight, 0)
        at_least(f"{prefix}.ramp_epochs", self.ramp_epochs, 0)
        if not self.layers:
            raise ConfigError(f"{prefix}.layers is empty: name at least one layer, e.g. layer3")

    def map_layers(self) -> list[str]:
        """The layers whose maps the term trains on (none when it is off)."""
        return list(self.layers) if self.weight > 0 else []


class GradCAMTerm(Term):
    """γ(t)·L_G between the anchor's carried maps and the strong view's maps."""

    section = "gradcam"
    metrics = ("loss_g",)
    settings: GradCAMSettings

    def anchor_taps(self, model: nn.Module) -> list[str]:
        return list(self.settings.layers)

    def anchor_needs_graph(self, model: nn.Module) -> bool:
        # at the closed-form layer no backward is needed, so no graph is built
        return any(name != cam_layer(model) for name in self.settings.layers)

    def from_anchor(self, ctx: StepContext, f: SSLForward) -> None:
        assert f.anchor_logits is not None and f.pl is not None
        self.targets = gradcam_targets(f.anchor_logits, f.anchor_feats, f.pl.classes, model=ctx.model)

    def main_taps(self, model: nn.Module) -> list[str]:
        return list(self.settings.layers)

    def loss(self, ctx: StepContext, f: SSLForward) -> tuple[Tensor, float, dict[str, Tensor]]:
        s = self.settings
        assert f.logits is not None and f.pl is not None
        loss_g, _, blank = gradcam_consistency(
            self.targets, f.logits, f.feats, f.anchor.theta, f.strong.theta, size=f.size, classes=f.pl.classes,
            mask=f.pl.mask, first_row=f.n_l, mode=s.grad_mode, norm=s.norm, distance=s.distance, model=ctx.model,
            skip_blank_targets=s.skip_blank_targets, details=True,
        )
        self.targets = {}
        gamma = s.weight * ramp(ctx.epoch, s.ramp_epochs)
        return loss_g, gamma, {"loss_g": loss_g.detach(), "blank_targets": blank.float().mean(),
                               "gamma": torch.tensor(gamma)}

    def double_backward_layers(self, net: nn.Module) -> list[str]:
        if self.settings.grad_mode != "full":
            return []
        return [name for name in self.settings.layers if name != cam_layer(net)]
