"""``lga``: label gradient alignment (Jackson & Schulman, arXiv 1902.02336), optionally + VAT.

Only the paper's abstract is public; every detail below is *camssl's choice*
(docs/methods.md §3; the functions are in :mod:`camssl.label_alignment`):

- a :class:`~camssl.methods.state.SampleTable` of imputed label logits Z, one row per
  training image (only unlabeled rows are used), q = softmax(Z / ``temperature``); a row
  starts from the model's logits on the weak view the first time its sample is drawn
  (``init: predict``) or from zeros (``uniform``); ``refresh`` restarts every row the batch
  draws from the model's current logits, so a row carries only its own step's K inner steps
  (the staleness fix of docs/results-lga.md; camssl's, not the paper's);
- per step, ``steps`` (K) RMS-normalised gradient steps of size ``inner_lr`` on the batch's
  rows minimise D(g_L, g_U(q)) (``grad_distance``: 1 − cos or squared L2), with g_L the gradient
  of the labeled loss (averaged over ranks) and g_U(q) that of the unlabeled weak view's
  cross-entropy with soft labels q; ``scope``: the last linear layer in closed form
  (``classifier``) or every parameter through one Jacobian–vector product (``all``);
- then L = alpha*L_S + lambda_u(t)*CE(f(x_U view), q detached) + vat.weight(t)*L_VAT
  (+ vat.entmin_weight*L_ent), ``view`` weak or strong, lambda_u ramped linearly over
  ``ramp_epochs`` and the VAT weight over ``vat.ramp_epochs``; ``vat.weight > 0`` is the
  paper's "LGA + VAT";
- the rows are written back after the optimiser step and merged over ranks at the epoch's
  end (each rank imputes its own share of a batch; a row drawn again by another rank in
  the same epoch is read as of the last merge).

Diagnostics (the true labels of the unlabeled images are used for nothing else): per step
D before/after the inner steps and the model's pseudo-label accuracy; per epoch, on the
rows updated in that epoch, the accuracy of argmax Z (``imputed_acc``) beside that of the
model's prediction when the row was updated (``imputed_rows_pl_acc``), and the share of
unlabeled images drawn so far (``seen_unlabeled``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from camssl.checks import at_least, integer_at_least, positive
from camssl.errors import ConfigError
from camssl.label_alignment import (DISTANCES, SCOPES, ClassifierGradient, ParameterGradient, align_labels,
                                    classifier_input, find_classifier)
from camssl.losses import frozen_bn_stats, soft_cross_entropy
from camssl.methods.base import RENAMED, Batch, Method, MethodConfig, RunInfo, StepContext, StepOutput, register
from camssl.methods.parts import ramp
from camssl.methods.state import SampleTable
from camssl.methods.vat_term import VATSettings, vat_terms


@dataclass
class LGAConfig(MethodConfig):
    name: str = "lga"
    lambda_u: float = 1.0  # camssl's choice: weight of the cross-entropy on the imputed labels
    steps: int = 3  # camssl's choice: K inner steps on the batch's rows of Z per training step
    inner_lr: float = 0.1  # camssl's choice: RMS change of Z (in logits) per inner step
    temperature: float = 0.5  # camssl's choice: q = softmax(Z / T); < 1 so that a row initialised from the prediction has g_U != 0
    init: Literal["predict", "uniform", "refresh"] = "predict"  # first value of a row: the model's logits, or zeros;
    # refresh: the model's logits at every draw (camssl's staleness fix: a row does not lag the model)
    scope: Literal[SCOPES] = "classifier"  # type: ignore[valid-type]  # parameters whose gradients are aligned
    grad_distance: Literal[DISTANCES] = "cosine"  # type: ignore[valid-type]  # D: 1 - cos, or sql2 (squared L2)
    view: Literal["weak", "strong"] = "weak"  # unlabeled view trained on q (camssl's choice: weak, as in Oliver et al.)
    classifier: str = "fc"  # module path of the last linear layer (logits = classifier(h))
    ramp_epochs: float = 5.0  # camssl's choice: linear ramp-up of lambda_u over this many epochs
    vat: VATSettings = field(default_factory=lambda: VATSettings(weight=0.0))  # weight > 0: LGA + VAT (the paper's); Oliver et al.: 0.3

    RENAMED: ClassVar[dict[str, str]] = {**RENAMED, "rampup_epochs": "ramp_epochs (and method.vat.ramp_epochs)"}

    def validate(self) -> None:
        super().validate()
        for key in ("lambda_u", "inner_lr", "ramp_epochs"):
            at_least(f"method.{key}", getattr(self, key), 0)
        integer_at_least("method.steps", self.steps, 0)
        positive("method.temperature", self.temperature)


@register
class LabelGradientAlignment(Method):
    name = "lga"
    Config = LGAConfig
    summary = "α·L_S + λ_u·CE(view, imputed labels) (+ L_VAT): label gradient alignment (Jackson & Schulman), camssl's formulation"
    uses_unlabeled = True
    bench_variants = {"lga/classifier": {"scope": "classifier"}, "lga/all": {"scope": "all"},
                      "lga+vat": {"vat": {"weight": 0.3}}}
    log_metrics = ("loss_s", "loss_u", "loss_vat", "d_before", "d_after", "pl_acc", "imputed_acc",
                   "imputed_rows_pl_acc", "seen_unlabeled")

    def __init__(self, cfg: LGAConfig, *, label_smoothing: float = 0.0) -> None:
        super().__init__(cfg, label_smoothing=label_smoothing)
        if not cfg.vat.active:  # this config's epoch line
            self.log_metrics = tuple(k for k in self.log_metrics if k != "loss_vat")

    def setup(self, run: RunInfo) -> None:
        if self.cfg.scope == "all" and any(isinstance(m, nn.SyncBatchNorm) for m in run.net.modules()):
            raise ConfigError("method.scope=all needs a double backward through SyncBatchNorm, which PyTorch does "
                              "not implement; use method.scope=classifier or sync_bn=false")
        find_classifier(run.net, self.cfg.classifier)  # a wrong path fails now, not mid-run
        self.dist, self.labels, self.num_classes = run.dist, run.labels, run.num_classes
        self.unlabeled = run.split.unlabeled.to(run.device)
        self.z = SampleTable(run.n_train, (run.num_classes,), device=run.device)
        self.pred = SampleTable(run.n_train, device=run.device, dtype=torch.long, fill=-1)  # model's argmax at the update
        self.epoch_start = 0  # first global step of the current epoch
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        assert batch.x_u is not None and batch.idx_u is not None
        cfg = self.cfg
        n_l = batch.x_l.shape[0]
        labeled, weak, strong = ctx.ssl_views(batch, "weak")
        with classifier_input(ctx.model, cfg.classifier) as cap:
            logits = ctx.model(torch.cat([labeled.images, weak.images]))
        logits_l, logits_w = logits[:n_l], logits[n_l:]
        loss_s, metrics = self.supervised(logits_l, batch.y_l)

        # imputation: K steps on the batch's rows of Z (nothing here reaches the parameters' .grad)
        if cfg.scope == "classifier":
            h = cap["h"]
            grad_u: ClassifierGradient | ParameterGradient = ClassifierGradient(h[n_l:], logits_w)
            smooth = self.label_smoothing
            target = F.one_hot(batch.y_l, logits.shape[1]).float() * (1 - smooth) + smooth / logits.shape[1]
            g_l = ClassifierGradient(h[:n_l], logits_l)(target)
        else:
            grad_u = ParameterGradient(logits_w, [p for p in ctx.model.parameters() if p.requires_grad])
            g_l = grad_u.labeled(loss_s)
        g_l = self.dist.all_reduce_mean(g_l.detach().clone())
        idx = batch.idx_u
        if cfg.init == "refresh":  # every drawn row restarts from the current prediction: no stored row is read
            z = logits_w.detach().float().clone()
        else:
            z = self.z.values[idx].clone()
            new = ~self.z.written(idx)
            z[new] = 0.0 if cfg.init == "uniform" else logits_w.detach().float()[new]
        res = align_labels(z, g_l, grad_u, steps=cfg.steps, lr=cfg.inner_lr, temperature=cfg.temperature,
                           distance=cfg.grad_distance)
        del grad_u  # frees the double-backward graph of scope=all before the training backward
        q = F.softmax(res.z / cfg.temperature, dim=1)
        pred = logits_w.detach().argmax(1)
        self.pending = (idx, res.z, pred)

        logits_u = logits_w if cfg.view == "weak" else ctx.model(strong.images)
        loss_u = soft_cross_entropy(q, logits_u).mean()
        lam = ramp(ctx.epoch, cfg.ramp_epochs)
        loss = cfg.alpha * loss_s + cfg.lambda_u * lam * loss_u
        metrics.update(loss_u=loss_u.detach(), d_before=res.d_before.float(), d_after=res.d_after.float(),
                       lambda_u=torch.tensor(cfg.lambda_u * lam),
                       changed=(res.z.argmax(1) != z.argmax(1)).float().mean())
        if cfg.vat.active:
            # VAT needs the logits of the weak view alone (BatchNorm mixes the concatenated batch);
            # that pass does not count the weak images in the BatchNorm statistics a second time
            with frozen_bn_stats(ctx.model):
                logits_alone = ctx.model(weak.images)
            terms = vat_terms(cfg.vat, ctx, weak.images, logits_alone)
            loss = loss + cfg.vat.weight_at(ctx.epoch) * terms["loss_vat"] + cfg.vat.entmin_weight * terms["loss_ent"]
            metrics.update({k: v.detach() for k, v in terms.items()})
        if batch.y_u is not None:
            metrics["pl_acc"] = (pred == batch.y_u).float().mean()
            metrics["imputed_batch_acc"] = (res.z.argmax(1) == batch.y_u).float().mean()
        return StepOutput(loss, metrics)

    def after_step(self, ctx: StepContext, batch: Batch, out: StepOutput) -> None:
        assert self.pending is not None
        idx, z, pred = self.pending
        self.z.write(idx, z, ctx.step)
        self.pred.write(idx, pred, ctx.step)
        self.pending = None

    def end_epoch(self) -> dict[str, float]:
        self.z.merge(self.dist)
        self.pred.merge(self.dist)
        rows = self.z.stamp >= self.epoch_start
        truth = self.labels[rows]
        n = max(int(rows.sum()), 1)
        out = {
            "imputed_acc": float((self.z.values[rows].argmax(1) == truth).sum()) / n,
            "imputed_rows_pl_acc": float((self.pred.values[rows] == truth).sum()) / n,
            "seen_unlabeled": int(self.z.written(self.unlabeled).sum()) / max(len(self.unlabeled), 1),
        }
        self.epoch_start = int(self.z.stamp.max()) + 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.z.state_dict(), "pred": self.pred.state_dict(), "epoch_start": self.epoch_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.z.load_state_dict(state["table"])
        self.pred.load_state_dict(state["pred"])
        self.epoch_start = int(state["epoch_start"])
