"""Scoring the pool: the task model's penultimate features and logits, the strategy's context, diagnostics."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.active.config import ActiveConfig
from camssl.active.strategies import PoolContext
from camssl.augment import Augmenter


@torch.no_grad()
def features_and_logits(model: nn.Module, images: Tensor, augmenter: Augmenter,
                        batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(L2-normalised penultimate features (N, D), logits (N, C)) of uint8 ``images``, in eval mode.

    The penultimate features are the input of the model's classifier ``model.fc`` (every
    camssl model has one: the globally pooled last stage), read by a forward pre-hook, so
    they come from the same forward as the logits.
    """
    seen: list[Tensor] = []
    hook = model.fc.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().flatten(1)))
    was_training = model.training
    model.eval()
    feats, logits = [], []
    try:
        for start in range(0, len(images), batch_size):
            seen.clear()
            logits.append(model(augmenter.normalize(images[start : start + batch_size])).float())
            feats.append(F.normalize(seen[-1].float(), dim=1))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(feats), torch.cat(logits)


def pool_context(model: nn.Module, images: Tensor, labeled: Tensor, labels: Tensor, num_classes: int,
                 augmenter: Augmenter, cfg: ActiveConfig, generator: torch.Generator,
                 features: Tensor | None = None, logits: Tensor | None = None) -> PoolContext:
    """A :class:`PoolContext` over the nodes ``images``; features and logits from ``model`` unless given."""
    if features is None or logits is None:
        features, logits = features_and_logits(model, images, augmenter, cfg.score_batch_size)
    return PoolContext(model=model, augmenter=augmenter, images=images, features=features.cpu(), logits=logits.cpu(),
                       labeled=labeled.cpu().long(), labels=labels.cpu().long(), num_classes=num_classes,
                       generator=generator, cfg=cfg)


def virtual_label_accuracy(ctx: PoolContext, chosen: Tensor, truth: Tensor) -> dict[str, Any]:
    """Accuracy of the virtual labels on the pool before the query, and on the rest of the pool after it.

    ``truth`` (N,): the data's labels of every node (diagnostics only; meaningful where they
    are the true labels). "After" propagates from the labeled nodes plus ``chosen`` with
    their labels from ``truth``, on the same graph.
    """
    truth = truth.cpu()
    pool = ctx.pool()
    before = ctx.propagation()
    rest_mask = torch.ones(len(ctx.features), dtype=torch.bool)
    rest_mask[ctx.labeled] = False
    rest_mask[chosen] = False
    rest = torch.nonzero(rest_mask).flatten()
    out: dict[str, Any] = {"virtual_acc_before": _acc(before.labels[pool], truth[pool]),
                           "virtual_acc_before_rest": _acc(before.labels[rest], truth[rest]), "virtual_acc_after": None}
    if len(rest):
        after = ctx.propagate(torch.cat([ctx.labeled, chosen]), torch.cat([ctx.labels, truth[chosen]]))
        out["virtual_acc_after"] = _acc(after.labels[rest], truth[rest])
    return out


def _acc(pred: Tensor, truth: Tensor) -> float | None:
    return float((pred == truth).float().mean()) if len(truth) else None
