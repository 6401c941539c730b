"""The method interface and registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from camssl.augment import Augmenter, View
    from camssl.config import MethodConfig


@dataclass
class Batch:
    """One training step's data, already on the training device.

    ``x_l``/``x_u`` are uint8 N×3×H×W; ``y_u`` is the unlabeled images' ground truth,
    used only for diagnostics (pseudo-label accuracy), never by a loss.
    """

    x_l: Tensor
    y_l: Tensor
    x_u: Tensor | None = None
    y_u: Tensor | None = None


@dataclass
class StepContext:
    """What a method may use in a step besides the batch."""

    model: nn.Module
    augmenter: Augmenter
    generator: torch.Generator  # the run's seeded augmentation generator
    epoch: float  # training progress in epochs (e.g. 2.5 = half-way through the third)
    labeled_view: str = "weak"
    channels_last: bool = False

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


class Method:
    """Base class: subclasses set ``name`` and implement :meth:`step`."""

    name: ClassVar[str]
    uses_unlabeled: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig, *, label_smoothing: float = 0.0) -> None:
        self.cfg = cfg
        self.label_smoothing = label_smoothing

    def taps(self) -> list[str]:
        """Stage outputs the method needs from the forward pass (none by default)."""
        return []

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def supervised_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under ``cls.name``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls
