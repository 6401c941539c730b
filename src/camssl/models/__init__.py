"""Model zoo: CIFAR ResNets, an ImageNet ResNet-50, WRN-28-2 and an airbench94-shaped net, all :class:`CamNet` s.

Example::

    model = build_model("resnet18", num_classes=10)
    logits = model(images)                                   # plain classifier
    logits, feats = model(images, taps=model.stages)         # plus stage outputs
    cam_feats = feats[model.cam_layer]                       # (N, C, h, w), exact Grad-CAM

=====================  ==================================================  ===========
name                   architecture                                        cam_layer
=====================  ==================================================  ===========
``resnet18``           CIFAR ResNet-18 (BasicBlock 2-2-2-2, 3x3 stem)       layer4
``resnet34``           CIFAR ResNet-34 (BasicBlock 3-4-6-3)                 layer4
``resnet50``           CIFAR ResNet-50 (Bottleneck 3-4-6-3)                 layer4
``resnet50_imagenet``  torchvision ResNet-50 (7x7/2 stem + max-pool)        layer4
``wrn28_2``            WRN-28-2 as in FixMatch                              features
``airnet``             airbench94's net (whitening conv, 3 conv groups)     layer3 with
                       (:mod:`camssl.models.airnet`)                        pool="avg",
                                                                            none with "max"
=====================  ==================================================  ===========

``airnet`` alone accepts ``widths`` (three group widths instead of ``width`` times 64/256/256)
and ``pool`` (``"max"``, airbench's default, or ``"avg"``); its whitening conv is set from
training images with :func:`~camssl.models.airnet.init_whitening`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from camssl.errors import ConfigError
from camssl.models.airnet import AirNet, init_whitening, scaled_widths
from camssl.models.base import CamNet, load_pretrained
from camssl.models.foreign import build_foreign, is_foreign
from camssl.models.pretrained import resolve_pretrained
from camssl.models.resnet import BasicBlock, Bottleneck, ResNet
from camssl.models.wrn import WideResNet

__all__ = ["MODEL_NAMES", "AirNet", "CamNet", "build_model", "init_whitening", "load_pretrained"]

MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "resnet50_imagenet", "wrn28_2", "airnet")

# (num_classes, width, resize_to, **model-specific keywords) -> model
_BUILDERS: dict[str, Callable[..., CamNet]] = {
    "resnet18": lambda n, w, r: ResNet("resnet18", BasicBlock, (2, 2, 2, 2), n, stem="cifar", width=w, resize_to=r),
    "resnet34": lambda n, w, r: ResNet("resnet34", BasicBlock, (3, 4, 6, 3), n, stem="cifar", width=w, resize_to=r),
    "resnet50": lambda n, w, r: ResNet("resnet50", Bottleneck, (3, 4, 6, 3), n, stem="cifar", width=w, resize_to=r),
    "resnet50_imagenet": lambda n, w, r: ResNet("resnet50_imagenet", Bottleneck, (3, 4, 6, 3), n, stem="imagenet",
                                                width=w, resize_to=r),
    "wrn28_2": lambda n, w, r: WideResNet("wrn28_2", n, depth=28, widen_factor=2, width=w, resize_to=r),
    "airnet": lambda n, w, r, widths=None, pool="max": AirNet(
        "airnet", n, widths=scaled_widths(w) if widths is None else widths, pool=pool, resize_to=r),
}

# keywords of build_model that only some models accept
_MODEL_KEYWORDS: dict[str, tuple[str, ...]] = {"airnet": ("widths", "pool")}


def build_model(name: str, num_classes: int, *, width: float = 1.0, pretrained: str | os.PathLike[str] | None = None,
                resize_to: int | None = None, widths: tuple[int, int, int] | None = None,
                pool: str | None = None, args: dict[str, Any] | None = None, pretrained_sha256: str | None = None) -> CamNet:
    """Create model ``name`` with ``num_classes`` outputs.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: number of classes (>= 1).
        width: channel multiplier (> 0; 1.0 = the standard architecture).
        pretrained: a state_dict to load (see :func:`load_pretrained`): a path, a URL
            (downloaded once into the torch hub cache), ``hf://repo/file`` or a named set
            such as ``torchvision:resnet50`` (:mod:`camssl.models.pretrained`).
        resize_to: if set, inputs are bilinearly resized to ``resize_to x resize_to``
            inside the model (e.g. 256 for ``resnet50_imagenet`` on small images).
        widths: ``airnet`` only: the three conv-group widths (instead of ``width``).
        pool: ``airnet`` only: ``"max"`` (default) or ``"avg"``.
        args: keyword arguments of your own factory (``name="package.module:factory"``,
            :mod:`camssl.models.foreign`).
        pretrained_sha256: the expected SHA-256 (or its first 8+ hex digits) of ``pretrained``
            when it is downloaded (:mod:`camssl.models.pretrained`).

    Raises:
        ConfigError: unknown name, invalid num_classes/width/resize_to/widths/pool, or a
            model-specific keyword given to a model that does not take it.
        UserError: pretrained weights missing or not fitting the model.
    """
    if is_foreign(name):
        model: CamNet = build_foreign(name, num_classes, args, resize_to)
        if pretrained is not None:
            load_pretrained(model, resolve_pretrained(str(pretrained), pretrained_sha256))
        return model
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}, "
                          "or your own as package.module:factory")
    if args:
        raise ConfigError(f"model.args is for your own model (model.name=package.module:factory), not {name}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, int | float) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"model width must be a positive number (1.0 = standard), got {width!r}")
    given: dict[str, Any] = {key: value for key, value in (("widths", widths), ("pool", pool)) if value is not None}
    for key in given:
        if key not in _MODEL_KEYWORDS.get(name, ()):
            takers = ", ".join(n for n, keys in _MODEL_KEYWORDS.items() if key in keys)
            raise ConfigError(f"model.{key} is only for {takers}, not {name}; remove it or choose model {takers}")
    if widths is not None and width != 1.0:
        raise ConfigError(f"give either model.widths ({widths!r}) or model.width ({width!r}), not both")
    model = _BUILDERS[name](num_classes, float(width), resize_to, **given)
    if pretrained is not None:
        load_pretrained(model, resolve_pretrained(str(pretrained), pretrained_sha256))
    return model
