"""``pseudo_label``: Lee & Cho's ablation α·L_S + β·L_P (Table II of arXiv 2108.13673).

L_P = -Σ_c p_c(anchor)·log f_c(strong): the cross-entropy between the detached prediction
on the anchor view (the original image by default, as in the paper, or the weak view) used
as a soft target and the prediction on the strong view (``method.pseudo``, see
:class:`~camssl.methods.parts.PseudoSettings`; an optional confidence threshold keeps only
the confident samples, averaged over the whole unlabeled batch). ``method.cam.weight > 0``
adds L_cam on the same forward (:mod:`camssl.methods.cam_term`, a camssl extension).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from camssl.methods.base import MethodConfig, register
from camssl.methods.cam_term import CamTerm, CamSettings
from camssl.methods.parts import PseudoSettings
from camssl.methods.ssl import SemiSupervised


@dataclass
class PseudoLabelConfig(MethodConfig):
    name: str = "pseudo_label"
    pseudo: PseudoSettings = field(default_factory=PseudoSettings)
    cam: CamSettings = field(default_factory=CamSettings)


@register
class PseudoLabel(SemiSupervised):
    name = "pseudo_label"
    Config = PseudoLabelConfig
    summary = "α·L_S + β·L_P: soft pseudo-labels of the original view on the strong view (the paper's ablation)"
    terms = (CamTerm,)
    bench_variants = {"pseudo_label": {}}
