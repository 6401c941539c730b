"""``fixmatch``: FixMatch (Sohn et al., NeurIPS 2020), L = α·L_S + λ_u·L_U, with L_G and L_cam as add-ons.

L_U = the mean over the unlabeled batch of mask·CE(f(strong(u)), ŷ), ŷ the argmax of the
weak view's prediction (no gradient), mask = max softmax ≥ τ (``method.pseudo``: hard
targets, τ = 0.95, λ_u = 1, anchor = the weak view, as published). The strong view is
RandAugment + Cutout (``augment.strong.policy=auto`` picks it for this method; see
:mod:`camssl.randaugment`); μ is ``optim.unlabeled_multiplier`` and the EMA of the weights
for evaluation is ``optim.ema_decay`` (the ``fast`` preset sets both).

Add-ons, each a configuration of this method (docs/methods.md §5):
- ``method.gradcam.weight > 0``: Grad-CAM consistency on FixMatch — the anchor map from the
  weak view (no gradient), class ŷ, carried into the strong view through both views'
  geometries, masked by the FixMatch mask;
- ``method.cam.weight > 0``: L_cam on the labeled rows and the masked strong rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from camssl.methods.base import MethodConfig, register
from camssl.methods.cam_term import CamTerm, CamSettings
from camssl.methods.gradcam_term import GradCAMSettings, GradCAMTerm
from camssl.methods.parts import PseudoSettings
from camssl.methods.ssl import SemiSupervised


def _fixmatch_pseudo() -> PseudoSettings:
    return PseudoSettings(weight=1.0, threshold=0.95, anchor="weak", target="hard")


@dataclass
class FixMatchConfig(MethodConfig):
    name: str = "fixmatch"
    pseudo: PseudoSettings = field(default_factory=_fixmatch_pseudo)  # λ_u = 1, τ = 0.95, weak anchor, hard ŷ
    gradcam: GradCAMSettings = field(default_factory=lambda: GradCAMSettings(weight=0.0))  # L_G add-on (off)
    cam: CamSettings = field(default_factory=CamSettings)  # L_cam add-on (off)


@register
class FixMatch(SemiSupervised):
    name = "fixmatch"
    Config = FixMatchConfig
    summary = "α·L_S + λ_u·L_U: hard pseudo-labels of the weak view above τ on the strong view (FixMatch)"
    terms = (GradCAMTerm, CamTerm)
    strong_policy = "randaugment"
    bench_variants = {"fixmatch": {}, "fixmatch+gradcam": {"gradcam": {"weight": 1.0}}}
