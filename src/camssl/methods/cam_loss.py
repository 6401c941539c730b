"""``cam_loss``: CAM-loss (Wang et al., ICCV 2021, arXiv 2109.01359), L = α·L_S + λ(t)·L_cam.

L_cam is the mean over pixels of ``|N(CAAM) - N(CAM_y)|`` at the model's last stage
(``cam_layer``), y the ground truth of the labeled image, computed from the same forward
pass as L_S (:func:`camssl.losses.cam_loss`; settings ``method.cam_*`` of
:class:`camssl.methods.cam_term.CamTermConfig`). Supervised: the unlabeled images are not
used; same labeled view, model, schedule and number of steps as ``supervised``, so the two
compare directly.

*camssl decisions* (only the paper's abstract is available): N = per-sample min–max over
the whole map; the CAM side is stop-gradient (``cam_target``: ``detach`` = features and W,
``detach-w`` = only W) and W gets no gradient from L_cam; λ = 1 after 10 epochs at λ = 0
(``cam_warmup_epochs``, a third of the cpu preset's 30). λ = 1 was chosen by the measurement
in docs/results-camloss.md, where every λ tried (1, 3; with and without warm-up) cost
accuracy against plain cross-entropy and λ = 1 cost least (−0.36 points, 95% CI
[−0.67, −0.05]); the unofficial implementation's λ = 3 cost −1.21 [−1.58, −0.84].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camssl.methods.base import Batch, Method, StepContext, StepOutput, register
from camssl.methods.cam_term import CamTerm, CamTermConfig


@dataclass
class CamLossConfig(CamTermConfig):
    name: str = "cam_loss"
    cam_weight: float = 1.0  # λ of L_cam; camssl's choice from docs/results-camloss.md (unofficial code: 3)


@register
class CamLoss(Method):
    name = "cam_loss"
    Config = CamLossConfig
    log_metrics = ("loss_s", "loss_cam")

    def __init__(self, cfg: CamLossConfig, *, label_smoothing: float = 0.0) -> None:
        super().__init__(cfg, label_smoothing=label_smoothing)
        self.cam_term = CamTerm(cfg)

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        view = ctx.view(ctx.labeled_view, batch.x_l)
        taps = self.cam_term.taps(ctx.model)  # none with cam_weight 0: exactly the supervised step
        logits, feats = ctx.model(view.images, taps=taps) if taps else (ctx.model(view.images), {})
        loss_s = self.supervised_loss(logits, batch.y_l)
        loss = self.cfg.alpha * loss_s
        metrics = {"loss_s": loss_s.detach(), "train_acc": (logits.argmax(1) == batch.y_l).float().mean()}
        if feats:
            lam = self.cam_term.weight_at(ctx.epoch)
            loss_cam = self.cam_term.loss(ctx.model, feats, batch.y_l)
            loss = loss + lam * loss_cam
            metrics.update(loss_cam=loss_cam.detach(), cam_weight=torch.tensor(lam))
        return StepOutput(loss, metrics)
