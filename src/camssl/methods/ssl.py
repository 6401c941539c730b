"""The semi-supervised step every pseudo-label method shares, and the loss terms it composes.

:class:`SemiSupervised` is one step for ``pseudo_label``, ``gradcam`` and ``fixmatch`` (and
any method a user combines from the same pieces)::

    L = α·L_S(labeled) + pseudo.weight·L_U(strong | anchor's pseudo-labels) + Σ_terms weight(t)·term

from two forwards: the anchor view (``method.pseudo.anchor``; no graph unless a term needs
the anchor's maps) and one forward over ``[labeled; strong]`` that every term taps. A
:class:`Term` is an add-on loss with its own config section (L_G: ``method.gradcam``, L_cam:
``method.cam``); it is active when its weight is above 0, so FixMatch + L_G is the
``fixmatch`` method with ``method.gradcam.weight=1`` — a configuration, not new step code.
``method.pseudo.flex=true`` replaces the fixed τ by FlexMatch's per-class thresholds
(:mod:`camssl.methods.flex`); their table lives in :class:`SemiSupervised`'s ``setup``,
``end_epoch`` and ``state_dict``, so a subclass that overrides those calls ``super()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from camssl.augment import View
from camssl.methods.base import Batch, Method, MethodConfig, RunInfo, StepContext, StepOutput
from camssl.methods.flex import FlexState
from camssl.methods.parts import PseudoLabels, pseudo_labels, pseudo_loss, unlabeled_diagnostics


@dataclass
class SSLForward:
    """What the terms of one semi-supervised step see: the views, the anchor's pseudo-labels and the forward."""

    labeled: View
    anchor: View
    strong: View
    n_l: int  # rows of the labeled batch at the top of ``logits``
    y_l: Tensor
    pl: PseudoLabels | None = None
    anchor_logits: Tensor | None = None  # only until the terms have read the anchor (then freed)
    anchor_feats: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None  # the forward of [labeled; strong]
    feats: dict[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return (self.strong.images.shape[2], self.strong.images.shape[3])


class Term:
    """An add-on loss of :class:`SemiSupervised`, configured by the section ``method.<section>``."""

    section: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = ()  # its metrics for the epoch line

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @property
    def active(self) -> bool:
        return self.settings.weight > 0

    def anchor_taps(self, model: nn.Module) -> list[str]:
        """Layers the term needs from the anchor's forward."""
        return []

    def anchor_needs_graph(self, model: nn.Module) -> bool:
        """Whether the anchor's forward must build a graph (e.g. Grad-CAM below the closed-form layer)."""
        return False

    def from_anchor(self, ctx: StepContext, f: SSLForward) -> None:
        """Read what the term needs of the anchor's forward (its graph is freed right after)."""

    def main_taps(self, model: nn.Module) -> list[str]:
        """Layers the term needs from the forward of [labeled; strong]."""
        return []

    def loss(self, ctx: StepContext, f: SSLForward) -> tuple[Tensor, float, dict[str, Tensor]]:
        """(the term's loss, its weight at this step, its metrics)."""
        raise NotImplementedError

    def double_backward_layers(self, net: nn.Module) -> list[str]:
        return []


def _unique(lists: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(name for names in lists for name in names))


class SemiSupervised(Method):
    """α·L_S + pseudo.weight·L_U + the active terms; the config needs a ``pseudo`` section and one per term."""

    uses_unlabeled = True
    terms: ClassVar[tuple[type[Term], ...]] = ()
    base_metrics: ClassVar[tuple[str, ...]] = ("loss_s", "loss_p", "mask_rate", "pl_acc")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "log_metrics" not in cls.__dict__:
            cls.log_metrics = cls.base_metrics + tuple(m for t in cls.terms for m in t.metrics)

    def __init__(self, cfg: MethodConfig, *, label_smoothing: float = 0.0) -> None:
        super().__init__(cfg, label_smoothing=label_smoothing)
        self.active = [t(getattr(cfg, t.section)) for t in self.terms]
        self.active = [t for t in self.active if t.active]
        self.log_metrics = self.base_metrics + tuple(m for t in self.active for m in t.metrics)  # this config's
        self.flex: FlexState | None = None

    def setup(self, run: RunInfo) -> None:
        p = self.cfg.pseudo
        if p.flex:
            self.dist = run.dist
            self.flex = FlexState(run.n_train, run.split.unlabeled, run.num_classes, run.device, p.flex_warmup)

    def double_backward_layers(self, net: nn.Module) -> list[str]:
        return _unique([t.double_backward_layers(net) for t in self.active])

    def _anchor(self, ctx: StepContext, f: SSLForward, idx_u: Tensor | None) -> None:
        """The anchor's forward: its pseudo-labels, and whatever the terms read of it."""
        taps = _unique([t.anchor_taps(ctx.model) for t in self.active])
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(t.anchor_needs_graph(ctx.model)
                                                                    for t in self.active)):
            if taps:
                f.anchor_logits, f.anchor_feats = ctx.model(f.anchor.images, taps=taps)
            else:
                f.anchor_logits = ctx.model(f.anchor.images)
        tau = self.cfg.pseudo.threshold
        if not self.cfg.pseudo.flex:
            f.pl = pseudo_labels(f.anchor_logits, tau)
        else:
            if self.flex is None or idx_u is None:
                raise RuntimeError("method.pseudo.flex needs SemiSupervised.setup (a subclass's setup must call "
                                   "super().setup(run)) and the unlabeled images' indices (Batch.idx_u)")
            f.pl = pseudo_labels(f.anchor_logits, self.flex.thresholds(tau))  # read before this step's update
            self.flex.update(idx_u, f.pl.probs, tau, ctx.step)
        for t in self.active:
            t.from_anchor(ctx, f)
        f.anchor_logits, f.anchor_feats = None, {}  # the anchor's graph is freed before the second forward

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        assert batch.x_u is not None
        cfg, p = self.cfg, self.cfg.pseudo
        labeled, anchor, strong = ctx.ssl_views(batch, p.anchor)
        f = SSLForward(labeled, anchor, strong, n_l=batch.x_l.shape[0], y_l=batch.y_l)
        self._anchor(ctx, f, batch.idx_u)
        assert f.pl is not None
        taps = _unique([t.main_taps(ctx.model) for t in self.active])
        images = torch.cat([labeled.images, strong.images])
        f.logits, f.feats = ctx.model(images, taps=taps) if taps else (ctx.model(images), {})
        logits_l, logits_u = f.logits[: f.n_l], f.logits[f.n_l :]
        loss_s, metrics = self.supervised(logits_l, batch.y_l)
        loss_p = pseudo_loss(f.pl, logits_u, p.target)
        terms = [t.loss(ctx, f) for t in self.active]
        loss = cfg.alpha * loss_s + p.weight * loss_p
        for value, weight, term_metrics in terms:
            loss = loss + weight * value
            metrics.update(term_metrics)
        metrics.update(loss_p=loss_p.detach(), **unlabeled_diagnostics(f.pl, batch.y_u))
        return StepOutput(loss, metrics)

    def end_epoch(self) -> dict[str, float]:
        if self.flex is None:
            return {}
        self.flex.merge(self.dist)
        thresholds = self.flex.thresholds(self.cfg.pseudo.threshold)
        return {"flex_threshold_min": float(thresholds.min()), "flex_threshold_mean": float(thresholds.mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"flex": self.flex.state_dict()} if self.flex is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.flex is not None:
            self.flex.load_state_dict(state["flex"])
