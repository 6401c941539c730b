"""``cam_loss``: CAM-loss (Wang et al., ICCV 2021, arXiv 2109.01359), L = α·L_S + λ(t)·L_cam.

L_cam is the mean over pixels of ``|N(CAAM) - N(CAM_y)|`` at the model's last stage
(``cam_layer``), y the ground truth of the labeled image, from the same forward as L_S
(:mod:`camssl.methods.cam_term`, settings ``method.cam``). Supervised: the unlabeled images
are not used; same labeled view, model, schedule and steps as ``supervised``, so the two
compare directly.

*camssl decisions* (only the paper's abstract is available): N = per-sample min–max; the
CAM side is stop-gradient and W gets no gradient from L_cam; λ = 1 after 10 epochs at λ = 0
(the λ was chosen by the measurement in docs/results-camloss.md; the unofficial
implementation uses 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from camssl.methods.base import Batch, Method, MethodConfig, StepContext, StepOutput, register
from camssl.methods.cam_term import CamSettings, CamTerm


@dataclass
class CamLossConfig(MethodConfig):
    name: str = "cam_loss"
    cam: CamSettings = field(default_factory=lambda: CamSettings(weight=1.0))  # λ = 1: camssl's choice (unofficial code: 3)


@register
class CamLoss(Method):
    name = "cam_loss"
    Config = CamLossConfig
    summary = "α·L_S + λ·L_cam: CAAM–CAM alignment on the labeled batch (CAM-loss, Wang et al.)"
    log_metrics = ("loss_s", "loss_cam")
    bench_variants = {"cam_loss": {}}

    def __init__(self, cfg: CamLossConfig, *, label_smoothing: float = 0.0) -> None:
        super().__init__(cfg, label_smoothing=label_smoothing)
        self.cam_term = CamTerm(cfg.cam)

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        view = ctx.view(ctx.labeled_view, batch.x_l)
        taps = self.cam_term.main_taps(ctx.model) if self.cam_term.active else []
        logits, feats = ctx.model(view.images, taps=taps) if taps else (ctx.model(view.images), {})
        loss_s, metrics = self.supervised(logits, batch.y_l)
        loss = self.cfg.alpha * loss_s
        if feats:  # none with weight 0: exactly the supervised step
            lam = self.cam_term.weight_at(ctx.epoch)
            loss_cam = self.cam_term.labeled_loss(ctx.model, feats, batch.y_l)
            loss = loss + lam * loss_cam
            metrics.update(loss_cam=loss_cam.detach(), cam_weight=torch.tensor(lam))
        return StepOutput(loss, metrics)
