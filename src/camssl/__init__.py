"""camssl: semi-supervised image classification guided by class activation maps.

The main entry points, importable from the package (loaded on first use)::

    from camssl import grad_cam, capture, losses, Trainer, load_config, build_model

- :func:`camssl.cam.grad_cam`, :func:`camssl.cam.capture`, :func:`camssl.cam.cam` — maps on any model;
- :func:`camssl.augment.carry` — move maps between augmented views;
- :mod:`camssl.losses` — the loss functions, for your own training loop;
- :func:`camssl.train.train`, :class:`camssl.train.Trainer` — training runs;
- :func:`camssl.active.run_active` — the active-learning loop (``camssl active``);
- :func:`camssl.config.load_config`, :func:`camssl.models.build_model`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "grad_cam": "camssl.cam",
    "capture": "camssl.cam",
    "cam": "camssl.cam",
    "normalize_maps": "camssl.cam",
    "carry": "camssl.augment",
    "Augmenter": "camssl.augment",
    "Trainer": "camssl.train",
    "load_config": "camssl.config",
    "TrainConfig": "camssl.config",
    "build_model": "camssl.models",
    "load_data": "camssl.data",
    "make_split": "camssl.data",
    "METHODS": "camssl.methods",
    "register": "camssl.methods",
    "run_active": "camssl.active",
}
_MODULES = ("losses", "cam", "augment", "methods", "models", "data", "config", "active")

__all__ = sorted([*_EXPORTS, *_MODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"camssl.{name}")
    raise AttributeError(f"module 'camssl' has no attribute {name!r}")
