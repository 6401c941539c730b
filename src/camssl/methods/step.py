"""What a method's step is given and returns: the batch, the context, the output, and the run's facts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from camssl.augment import Augmenter, View
    from camssl.data import Split
    from camssl.distributed import Dist


@dataclass
class Batch:
    """One training step's data, already on the training device.

    ``x_l``/``x_u`` are uint8 N×3×H×W; ``idx_l``/``idx_u`` their indices into the training
    set (this rank's share of the global batch); ``y_u`` is the unlabeled images' ground
    truth, used only for diagnostics (pseudo-label accuracy), never by a loss.
    """

    x_l: Tensor
    y_l: Tensor
    x_u: Tensor | None = None
    y_u: Tensor | None = None
    idx_l: Tensor | None = None
    idx_u: Tensor | None = None


@dataclass
class StepContext:
    """What a method may use in a step besides the batch."""

    model: nn.Module
    augmenter: Augmenter
    generator: torch.Generator  # the run's seeded augmentation generator
    epoch: float  # training progress in epochs (e.g. 2.5 = half-way through the third)
    labeled_view: str = "weak"
    channels_last: bool = False
    step: int = 0  # global step (0-based) of this training step

    def view(self, kind: str, x: Tensor) -> View:
        """Make the ``original`` / ``weak`` / ``strong`` view of a uint8 batch."""
        if kind == "original":
            v = self.augmenter.original(x)
        elif kind == "weak":
            v = self.augmenter.weak(x, self.generator)
        elif kind == "strong":
            v = self.augmenter.strong(x, self.generator)
        else:  # pragma: no cover - validated by the config
            raise ValueError(kind)
        if self.channels_last:
            v.images = v.images.contiguous(memory_format=torch.channels_last)
        return v

    def ssl_views(self, batch: Batch, anchor: str) -> tuple[View, View, View]:
        """The labeled view, the unlabeled anchor view and the strong view of a semi-supervised step.

        Always drawn in this order, so every method that uses them (and the benchmark)
        consumes the augmentation generator identically.
        """
        assert batch.x_u is not None
        return self.view(self.labeled_view, batch.x_l), self.view(anchor, batch.x_u), self.view("strong", batch.x_u)


@dataclass
class StepOutput:
    """The loss to minimise and detached scalar metrics (averaged over the epoch)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class RunInfo:
    """What :meth:`Method.setup` gets: the run's facts and a loader for frozen models."""

    num_classes: int
    classes: list[str]
    n_train: int  # size of the training set (``idx_l``/``idx_u`` index into it)
    split: Split
    device: torch.device
    dist: Dist
    net: nn.Module  # the bare model being trained (not the DDP wrapper)
    run_dir: Path
    labels: Tensor  # the training set's labels on the device (diagnostics only, never a loss)
    load_frozen: Callable[[str | Path], nn.Module]  # a run directory or checkpoint -> eval model, no grads
