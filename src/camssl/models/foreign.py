"""Your own backbone: ``model.name=package.module:factory`` builds any ``nn.Module`` from your code.

The factory is imported and called with ``model.args`` as keyword arguments, plus
``num_classes`` when it takes that keyword (timm's ``create_model`` does); otherwise the
last ``nn.Linear`` of the module it returns is replaced by a fresh one with
``num_classes`` outputs. The module is wrapped as a :class:`~camssl.models.base.CamNet`
that keeps its own module paths, so Grad-CAM layers are named as in your code
(``method.gradcam.layers=layer3`` or ``features.6``; ``auto`` picks the last spatial
stage, :func:`camssl.cam.auto_layer`). Its maps always take the autograd route (camssl
cannot know whether a pooled linear head follows a layer), so CAM, CAAM and the methods
built on them (``cam_loss``, ``cam_kd``, ``method.cam``) need a camssl model.

For example, with timm installed (camssl does not need it)::

    camssl train --model timm:create_model model.args='{model_name: resnet18}' --layer auto
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from camssl.errors import ConfigError
from camssl.models.base import CamNet


def is_foreign(name: str) -> bool:
    """Whether ``name`` names a factory in the user's code (``package.module:factory``)."""
    return ":" in name


def _factory(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model.name={name!r}: cannot import {module_name!r} ({e}); check the name and PYTHONPATH")
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.name={name!r}: {module_name} has no callable {attr!r}; write package.module:function")
    return factory


def _takes_num_classes(factory: Any) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)


def _head(module: nn.Module) -> str:
    heads = [path for path, m in module.named_modules() if isinstance(m, nn.Linear)]
    return heads[-1] if heads else ""


def _replace_head(module: nn.Module, num_classes: int, name: str) -> nn.Module:
    heads = [(path, m) for path, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ConfigError(f"model.name={name!r}: the module has no nn.Linear classifier to give {num_classes} outputs; "
                          "make the factory take num_classes")
    path, head = heads[-1]
    if head.out_features != num_classes:
        parent = module.get_submodule(path.rpartition(".")[0]) if "." in path else module
        new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
        setattr(parent, path.rpartition(".")[2], new)
    return module


class ForeignNet(CamNet):
    """A user's module as a CamNet: the same submodules under the same names, no closed-form CAM layer."""

    cam_layer = ""

    def __init__(self, name: str, inner: nn.Module, resize_to: int | None = None) -> None:
        super().__init__(name, resize_to=resize_to)
        object.__setattr__(self, "_inner", inner)  # not a submodule: its children are adopted below
        for child_name, child in inner.named_children():
            if hasattr(CamNet, child_name) or child_name in ("name", "resize_to", "stages", "example_tap"):
                raise ConfigError(f"model.name={name!r}: its submodule {child_name!r} has a name camssl's model "
                                  "wrapper uses; rename it in your module")
            self.add_module(child_name, child)
        for p_name, p in inner.named_parameters(recurse=False):
            self.register_parameter(p_name, p)
        for b_name, b in inner.named_buffers(recurse=False):
            self.register_buffer(b_name, b)
        self.stages = tuple(n for n, _ in inner.named_children())
        self.classifier_path = _head(inner)
        self.example_tap = self.stages[-1] if self.stages else ""

    def _forward_impl(self, x: Tensor) -> Tensor:
        return self._inner(x)

    def _apply(self, fn: Any, recurse: bool = True) -> ForeignNet:  # .to(), .float(): the inner module's own tensors
        super()._apply(fn, recurse)
        for p_name, p in self.named_parameters(recurse=False):
            setattr(self._inner, p_name, p)
        for b_name, b in self.named_buffers(recurse=False):
            setattr(self._inner, b_name, b)
        return self


def build_foreign(name: str, num_classes: int, args: dict[str, Any] | None = None,
                  resize_to: int | None = None) -> ForeignNet:
    """The module ``package.module:factory(**args)`` with ``num_classes`` outputs, as a :class:`ForeignNet`."""
    factory = _factory(name)
    kwargs = dict(args or {})
    if _takes_num_classes(factory):
        kwargs.setdefault("num_classes", num_classes)
    try:
        module = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model.name={name!r}: calling it with {sorted(kwargs)} failed ({e}); fix model.args") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model.name={name!r} returned {type(module).__name__}, not a torch.nn.Module")
    module = _replace_head(module, num_classes, name)
    with torch.no_grad():
        out = module.eval()(torch.zeros(2, 3, 32, 32) if resize_to is None else torch.zeros(2, 3, resize_to, resize_to))
    if not isinstance(out, Tensor) or out.shape != (2, num_classes):
        raise ConfigError(f"model.name={name!r} must map images to (batch, {num_classes}) logits; it returned "
                          f"{getattr(out, 'shape', type(out).__name__)}")
    return ForeignNet(name, module.train(), resize_to=resize_to)
