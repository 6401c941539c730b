"""``gradcam``: Grad-CAM consistency training (Lee & Cho, arXiv 2108.13673), L = α·L_S + β·L_P + γ·L_G.

L_S and L_P are exactly those of ``pseudo_label`` (so ``method.gradcam.weight=0`` *is* the
paper's ablation), and L_G is the term of :mod:`camssl.methods.gradcam_term`.
``method.cam.weight > 0`` adds L_cam on the same forward. The same L_G on FixMatch is the
``fixmatch`` method with ``method.gradcam.weight > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from camssl.methods.base import MethodConfig, register
from camssl.methods.cam_term import CamTerm, CamSettings
from camssl.methods.gradcam_term import GradCAMSettings, GradCAMTerm
from camssl.methods.parts import PseudoSettings
from camssl.methods.ssl import SemiSupervised


@dataclass
class GradCAMConfig(MethodConfig):
    name: str = "gradcam"
    pseudo: PseudoSettings = field(default_factory=PseudoSettings)
    gradcam: GradCAMSettings = field(default_factory=GradCAMSettings)
    cam: CamSettings = field(default_factory=CamSettings)


@register
class GradCAMConsistency(SemiSupervised):
    name = "gradcam"
    Config = GradCAMConfig
    summary = "α·L_S + β·L_P + γ·L_G: Grad-CAM consistency between the original and the strong view (the paper)"
    terms = (GradCAMTerm, CamTerm)
