"""Accuracy of a model on a whole image set (sharded over ranks when several train together)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.augment import Augmenter


def _mirror(model: nn.Module, x: Tensor) -> Tensor:
    return 0.5 * model(x) + 0.5 * model(x.flip(-1))


def tta_logits(model: nn.Module, x: Tensor, level: int = 0) -> Tensor:
    """Logits of normalised images ``x`` with test-time augmentation (airbench's levels).

    0: the images alone; 1: the mean of the image and its mirror image; 2: half that, half the
    mean of the mirrored pairs translated by one pixel up-left and down-right (reflect padding):
    6 views per image.
    """
    if level == 0:
        return model(x)
    logits = _mirror(model, x)
    if level == 1:
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
    return 0.5 * logits + 0.5 * torch.stack([_mirror(model, v.contiguous(memory_format=torch.channels_last)
                                                      if x.is_contiguous(memory_format=torch.channels_last) else
                                                      v.contiguous()) for v in shifted]).mean(0)


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
    tta: int = 0,
) -> dict[str, Any]:
    """Accuracy, mean loss and per-class accuracy of ``model`` on uint8 ``images``.

    ``reduce`` (e.g. a sum over ranks) is applied to the per-class hit and sample counts
    and the loss sum before they are turned into rates: each rank passes its shard of a
    set and gets the numbers of the whole set. ``tta``: test-time augmentation level
    (:func:`tta_logits`).
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
            logits = tta_logits(model, x, tta)
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
