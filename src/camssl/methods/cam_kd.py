"""``cam_kd``: CAAM–CAM matching distillation (Wang et al., ICCV 2021), with Hinton logit KD beside it.

A frozen teacher (any trained camssl run: ``--teacher RUN_DIR`` or a checkpoint file; its
architecture and width may differ from the student's, its classes must be the run's)
supervises the student on the labeled view::

    L = α·CE + caam_weight·|N(CAAM_student) - N(resize(CAM_teacher, y))| + logit_weight·T²·KL(p_t^T ‖ p_s^T)

with y the ground truth, CAAM/CAM at each model's ``cam_layer``, N the per-sample
normalisation ``norm`` and a bilinear resize of the teacher's map to the student's size
when they differ (:func:`camssl.losses.caam_matching`, :func:`camssl.losses.logit_kd`).
The four variants of a comparison are this one code path: the student alone
(both weights 0: the computation of ``supervised``), + logit KD, + CAAM–CAM, + both. The
teacher's forward runs in all four, so every variant logs ``loss_caam``, ``loss_kd`` and
``teacher_acc`` (a term whose weight is 0 is computed on the detached student, for the log).

The teacher is loaded in :meth:`setup` (eval mode, no gradients, never trained, never
saved in checkpoints); its path and weight fingerprint are the method's state, and a
resume whose teacher has other weights is refused.

*camssl decisions* (only the paper's abstract is available): the target is the teacher's
CAM of the true class (as the abstract says) without ReLU; N = per-sample min–max; the
teacher runs on the student's augmented labeled view; ``caam_weight = 3`` (the CAM-loss λ
of the unofficial implementation) and ``temperature = 4`` are provisional defaults; no
warm-up (the teacher's maps are informative from the first step).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from camssl.cam import NORMALIZATIONS, cam_layer, fc_weight
from camssl.checks import at_least, positive
from camssl.errors import ConfigError, UserError
from camssl.losses import caam_matching, logit_kd, teacher_cams
from camssl.methods.base import Batch, Method, MethodConfig, RunInfo, StepContext, StepOutput, register
from camssl.models.saved import fingerprint


@dataclass
class CamKDConfig(MethodConfig):
    name: str = "cam_kd"
    teacher: str | None = None  # run directory (its best.pt) or checkpoint file of a trained camssl run; required
    caam_weight: float = 3.0  # λ_kd of CAAM–CAM matching (provisional; 0 = off)
    logit_weight: float = 0.0  # weight of Hinton logit KD (0 = off)
    temperature: float = 4.0  # T of logit KD (provisional, a common CIFAR choice)
    norm: Literal[NORMALIZATIONS] = "minmax"  # type: ignore[valid-type]  # N of both maps (camssl: per-sample min–max)

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise ConfigError("method cam_kd needs a teacher: give --teacher RUN_DIR (or method.teacher=PATH), "
                              "the run directory or checkpoint of a trained camssl run")
        at_least("method.caam_weight", self.caam_weight, 0)
        at_least("method.logit_weight", self.logit_weight, 0)
        positive("method.temperature", self.temperature)


def fp32_under_fp16(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """The teacher's forward leaves fp16 autocast for fp32 (bf16 autocast, and none, are kept).

    A frozen teacher's activations are not kept in fp16's range by the student's loss scale:
    a teacher with logits of ~5·10^4 (a supervised run after one epoch, BatchNorm in eval mode)
    gave inf logits and a NaN distillation loss at the second step on a GPU under fp16
    (docs/gpu.md). bf16 has fp32's range, so it keeps its speed.
    """
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@register
class CamKD(Method):
    name = "cam_kd"
    Config = CamKDConfig
    summary = "α·L_S + CAAM–CAM matching and/or logit KD from a frozen teacher (Wang et al.)"
    log_metrics = ("loss_s", "loss_caam", "loss_kd", "teacher_acc")

    teacher: nn.Module
    teacher_fingerprint: str

    def setup(self, run: RunInfo) -> None:
        path = str(self.cfg.teacher)
        try:
            teacher = run.load_frozen(path)
        except UserError as e:
            raise UserError(f"method.teacher: {e}") from None
        classes = fc_weight(teacher).shape[0]
        if classes != run.num_classes:
            raise UserError(f"method.teacher: the teacher '{path}' has {classes} classes, this run's data has "
                            f"{run.num_classes}; give a teacher trained on the same classes")
        self.teacher, self.teacher_layer = teacher, cam_layer(teacher)
        self.teacher_path = str(Path(path).resolve())
        self.teacher_fingerprint = fingerprint(teacher)

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        cfg = self.cfg
        view = ctx.view(ctx.labeled_view, batch.x_l)
        layer = cam_layer(ctx.model)
        logits, feats = ctx.model(view.images, taps=[layer])
        with torch.no_grad(), fp32_under_fp16(view.images.device.type):
            t_logits, t_feats = self.teacher(view.images, taps=[self.teacher_layer])
            t_maps = teacher_cams(t_feats[self.teacher_layer], fc_weight(self.teacher), batch.y_l)
        loss_s, metrics = self.supervised(logits, batch.y_l)
        # a term with weight 0 is computed without a graph (logged only): the step then trains
        # exactly like the student alone
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.caam_weight > 0):
            loss_caam = caam_matching(feats[layer], t_maps, norm=cfg.norm).mean()
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.logit_weight > 0):
            loss_kd = logit_kd(logits, t_logits, cfg.temperature)
        loss = cfg.alpha * loss_s
        if cfg.caam_weight > 0:
            loss = loss + cfg.caam_weight * loss_caam
        if cfg.logit_weight > 0:
            loss = loss + cfg.logit_weight * loss_kd
        metrics.update(loss_caam=loss_caam.detach(), loss_kd=loss_kd.detach(),
                       teacher_acc=(t_logits.argmax(1) == batch.y_l).float().mean())
        return StepOutput(loss, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher_path, "teacher_fingerprint": self.teacher_fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("teacher_fingerprint")
        if saved != self.teacher_fingerprint:
            raise UserError(
                f"this run was trained with the teacher {state.get('teacher')} (weights {saved}), but the teacher "
                f"{self.teacher_path} has weights {self.teacher_fingerprint}; resume with the same teacher, "
                "or start a new run with --out"
            )
