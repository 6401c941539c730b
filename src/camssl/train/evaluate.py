"""Accuracy of a model on a whole image set (sharded over ranks when several train together)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.augment import Augmenter


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    augmenter: Augmenter,
    batch_size: int,
    num_classes: int,
    channels_last: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Accuracy, mean loss and per-class accuracy of ``model`` on uint8 ``images``.

    ``reduce`` (e.g. a sum over ranks) is applied to the per-class hit and sample counts
    and the loss sum before they are turned into rates: each rank passes its shard of a
    set and gets the numbers of the whole set.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_classes, device=images.device)
    count = torch.zeros(num_classes, device=images.device)
    loss_sum = torch.zeros((), device=images.device)
    for i in range(0, len(images), batch_size):
        x = augmenter.normalize(images[i : i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[i : i + batch_size]
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        hit = (logits.argmax(1) == y).float()
        correct.index_add_(0, y, hit)
        count.index_add_(0, y, torch.ones_like(hit))
    model.train(was_training)
    if reduce is not None:
        packed = reduce(torch.cat([correct, count, loss_sum[None]]))
        correct, count, loss_sum = packed[:num_classes], packed[num_classes:-1], packed[-1]
    n = count.sum().clamp_min(1)
    per_class = (correct / count.clamp_min(1)).tolist()
    return {
        "acc": float(correct.sum() / n),
        "loss": float(loss_sum / n),
        "per_class": per_class,
        "n": int(count.sum()),
    }
