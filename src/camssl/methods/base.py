"""The method interface, its lifecycle and the registry.

A method owns its losses and any state it needs; the trainer owns everything else
(optimiser, devices, checkpoints, logging). Per run, the trainer calls::

    method = METHODS[cfg.method.name](cfg.method, label_smoothing=...)
    method.setup(run)                     # once: classes, split, device, ranks, frozen models
    method.load_state_dict(state)         # on resume, from the checkpoint
    for each epoch:
        for each step:
            out = method.step(ctx, batch)     # -> StepOutput(loss, metrics)
            ... backward, optimiser step ...
            method.after_step(batch, out)
        method.end_epoch()                # e.g. merge per-rank state
        checkpoint <- method.state_dict()

A method also declares what the trainer, the benchmark, the CLI help and the README's
table need to know about it (class attributes below), so nothing outside the method tests
its name. ``tests/test_method_contract.py`` checks every registered method against this
contract: a finite loss, its declared metrics, a state round trip, gradients that reach the
model, ``uses_unlabeled`` honoured, and an exact resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from camssl.checks import at_least
from camssl.errors import ConfigError

from camssl.methods.step import Batch, RunInfo, StepContext, StepOutput

__all__ = ["METHODS", "RENAMED", "Batch", "Method", "MethodConfig", "RunInfo", "StepContext", "StepOutput",
           "method_config_class", "register"]


METHODS: dict[str, type[Method]] = {}  # the registry: name -> method class (filled by register)

# keys of the single-level method configs before each loss component got its own section
RENAMED = {
    "beta": "pseudo.weight", "threshold": "pseudo.threshold", "anchor": "pseudo.anchor",
    "gamma": "gradcam.weight", "layers": "gradcam.layers", "grad_mode": "gradcam.grad_mode",
    "norm": "gradcam.norm", "distance": "gradcam.distance", "gamma_rampup_epochs": "gradcam.ramp_epochs",
    "skip_blank_targets": "gradcam.skip_blank_targets",
    "cam_weight": "cam.weight", "cam_warmup_epochs": "cam.ramp_epochs", "cam_warmup": "cam.ramp",
    "cam_norm": "cam.norm", "cam_target": "cam.target", "cam_threshold": "cam.threshold",
    "cam_unlabeled": "cam.unlabeled",
    "vat_weight": "vat.weight", "vat_eps": "vat.eps", "vat_xi": "vat.xi", "vat_power_iters": "vat.power_iters",
    "entmin_weight": "vat.entmin_weight", "rampup_epochs": "vat.ramp_epochs",
}


@dataclass
class MethodConfig:
    """The fields every method has; each method declares a subclass with its own fields and sections."""

    name: str = "supervised"
    alpha: float = 1.0  # weight of the supervised loss L_S

    RENAMED: ClassVar[dict[str, str]] = RENAMED

    def validate(self) -> None:
        """Check the values (ConfigError naming the key); sections check their own fields."""
        at_least("method.alpha", self.alpha, 0)
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section) and hasattr(section, "validate"):
                section.validate(f"method.{f.name}")

    def cam_layers(self) -> list[str]:
        """The layers whose class activation maps the method trains on (its sections' ``map_layers()``)."""
        sections = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return list(dict.fromkeys(name for s in sections if hasattr(s, "map_layers") for name in s.map_layers()))

    @classmethod
    def resolve_config_class(cls, value: dict[str, Any], current: Any) -> type[MethodConfig]:
        """The config class of the method a ``method:`` section names (its ``name``, else the current one's)."""
        return method_config_class(value.get("name", getattr(current, "name", MethodConfig.name)))

    @classmethod
    def config_scope(cls) -> str:
        return f" for method {cls().name}"


def method_config_class(name: Any) -> type[MethodConfig]:
    """The config dataclass of the method called ``name``; ConfigError naming the methods if unknown."""
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method.name={name!r} is unknown; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name].Config



class Method:
    """Base class: subclasses set ``name`` and ``Config`` and implement :meth:`step`."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    summary: ClassVar[str] = ""  # the objective in one line (CLI help, the README's method table)
    uses_unlabeled: ClassVar[bool] = False  # the trainer draws an unlabeled batch per step
    log_metrics: ClassVar[tuple[str, ...]] = ("loss_s",)  # metrics shown on the epoch line (step or end_epoch)
    strong_policy: ClassVar[str] = "camssl"  # the strong view under augment.strong.policy=auto
    # step variants ``camssl bench`` times: {key: method config fields}; {} = not timed (e.g. needs a teacher)
    bench_variants: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, cfg: MethodConfig, *, label_smoothing: float = 0.0) -> None:
        self.cfg = cfg
        self.label_smoothing = label_smoothing

    # ------------------------------------------------------------ lifecycle (all optional)

    def setup(self, run: RunInfo) -> None:
        """Called once before training (and before :meth:`load_state_dict` on resume)."""

    def taps(self) -> list[str]:
        """Stage outputs the method needs from the forward pass (none by default)."""
        return []

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def after_step(self, ctx: StepContext, batch: Batch, out: StepOutput) -> None:
        """Called after the optimiser step."""

    def end_epoch(self) -> dict[str, float]:
        """Called after each epoch's last step (before the checkpoint); returns extra epoch metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The method's own state, stored in the checkpoint (tensors, numbers, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""

    def double_backward_layers(self, net: nn.Module) -> list[str]:
        """Layers through which the method's loss needs a double backward (refused with SyncBatchNorm)."""
        return []

    # ------------------------------------------------------------ shared pieces

    def supervised_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def supervised(self, logits: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_S of the labeled rows and its metrics (``loss_s``, ``train_acc``)."""
        loss_s = self.supervised_loss(logits, y)
        return loss_s, {"loss_s": loss_s.detach(), "train_acc": (logits.argmax(1) == y).float().mean()}



def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under ``cls.name``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    if cls.Config.__dataclass_fields__["name"].default != cls.name:
        raise ValueError(f"{cls.Config.__name__}.name must default to {cls.name!r} (the method's name)")
    METHODS[cls.name] = cls
    return cls
