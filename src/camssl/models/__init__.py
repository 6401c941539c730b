"""Model zoo: CIFAR ResNets, an ImageNet ResNet-50 and WRN-28-2, all :class:`CamNet` s.

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
=====================  ==================================================  ===========
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from camssl.errors import ConfigError
from camssl.models.base import CamNet, load_pretrained
from camssl.models.resnet import BasicBlock, Bottleneck, ResNet
from camssl.models.wrn import WideResNet

__all__ = ["MODEL_NAMES", "CamNet", "build_model", "load_pretrained"]

MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "resnet50_imagenet", "wrn28_2")

_BUILDERS: dict[str, Callable[[int, float, int | None], CamNet]] = {
    "resnet18": lambda n, w, r: ResNet("resnet18", BasicBlock, (2, 2, 2, 2), n, stem="cifar", width=w, resize_to=r),
    "resnet34": lambda n, w, r: ResNet("resnet34", BasicBlock, (3, 4, 6, 3), n, stem="cifar", width=w, resize_to=r),
    "resnet50": lambda n, w, r: ResNet("resnet50", Bottleneck, (3, 4, 6, 3), n, stem="cifar", width=w, resize_to=r),
    "resnet50_imagenet": lambda n, w, r: ResNet("resnet50_imagenet", Bottleneck, (3, 4, 6, 3), n, stem="imagenet",
                                                width=w, resize_to=r),
    "wrn28_2": lambda n, w, r: WideResNet("wrn28_2", n, depth=28, widen_factor=2, width=w, resize_to=r),
}


def build_model(name: str, num_classes: int, *, width: float = 1.0, pretrained: str | os.PathLike[str] | None = None,
                resize_to: int | None = None) -> CamNet:
    """Create model ``name`` with ``num_classes`` outputs.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: number of classes (>= 1).
        width: channel multiplier (> 0; 1.0 = the standard architecture).
        pretrained: optional path of a state_dict to load (see :func:`load_pretrained`).
        resize_to: if set, inputs are bilinearly resized to ``resize_to x resize_to``
            inside the model (e.g. 256 for ``resnet50_imagenet`` on small images).

    Raises:
        ConfigError: unknown name or invalid num_classes/width/resize_to.
        UserError: pretrained weights missing or not fitting the model.
    """
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, int | float) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"model width must be a positive number (1.0 = standard), got {width!r}")
    model = _BUILDERS[name](num_classes, float(width), resize_to)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model
