"""Common base class for camssl backbones and loading of pretrained weights.

Every model is a :class:`CamNet`: a classifier whose ``forward`` can additionally
return the outputs of named layers ("taps") from the very same forward pass, so that
training objectives (Grad-CAM consistency) can differentiate through them. Taps are
collected with forward hooks that exist only for the duration of one call, which keeps
the model usable as a plain ``logits = model(x)`` classifier (captum, DDP, ...).

:func:`load_pretrained` loads a state_dict (torchvision/timm for ``resnet50_imagenet``,
or one saved from a camssl model) and re-initialises a classifier of a different size.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.errors import ConfigError, UserError

__all__ = ["CamNet", "conv3x3", "init_weights", "load_pretrained", "scale_channels"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_LISTED_KEYS = 3


def scale_channels(channels: int, width: float) -> int:
    """Channel count ``channels * width`` rounded to an int, at least 4."""
    return max(4, int(round(channels * width)))


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution with padding 1 and no bias (the ResNet and WRN building block)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convolutions; BatchNorm weight 1, bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class CamNet(nn.Module):
    """Base class of every camssl model: a classifier with tappable layers.

    Subclasses set the class attributes :attr:`stages` and :attr:`cam_layer`, create
    ``self.fc`` and implement :meth:`_forward_impl` (input image -> logits).

    Attributes:
        name: the model name given to :func:`camssl.models.build_model`.
        stages: documented tap names (module paths), shallow to deep.
        cam_layer: the stage whose output goes through global average pooling straight
            into :attr:`fc`; closed-form Grad-CAM is exact at this layer.
        fc: the linear classifier.
        resize_to: if set, inputs are bilinearly resized to ``resize_to x resize_to``
            as the first operation of the forward pass.
    """

    stages: tuple[str, ...] = ()
    cam_layer: str = ""
    classifier_path: str = "fc"  # module path of the classifier (kept freshly initialised when pretrained weights' differs)
    example_tap: str = "layer3.0.conv1"
    fc: nn.Linear

    def __init__(self, name: str, *, resize_to: int | None = None) -> None:
        super().__init__()
        if resize_to is not None and (isinstance(resize_to, bool) or not isinstance(resize_to, int) or resize_to < 1):
            raise ConfigError(f"resize_to must be a positive integer or null, got {resize_to!r}; e.g. resize_to: 256")
        self.name = name
        self.resize_to = resize_to

    @overload
    def forward(self, x: Tensor, taps: None = None) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, taps: Sequence[str] | str) -> tuple[Tensor, dict[str, Tensor]]: ...

    def forward(self, x: Tensor, taps: Sequence[str] | str | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Classify ``x`` (N, 3, H, W); optionally also return intermediate outputs.

        Args:
            x: image batch.
            taps: ``None`` to return only the logits; otherwise layer names (stage
                names or any module path such as ``"layer3.0.conv1"``; a single string
                counts as one name).

        Returns:
            The logits (N, num_classes) if ``taps`` is None, else ``(logits, feats)``
            where ``feats[name]`` is the output of that module in this forward pass
            (part of the autograd graph, neither detached nor copied). A module that
            runs several times per pass (e.g. a block's shared ``relu``) reports its
            last output.

        Raises:
            ConfigError: an unknown layer name.
        """
        if taps is None:
            return self._logits(x)
        from camssl.cam import capture

        names = [taps] if isinstance(taps, str) else list(dict.fromkeys(taps))
        for name in names:
            self.check_layer(name)
        with capture(self, names) as feats:
            logits = self._logits(x)
        return logits, {name: feats[name] for name in names}

    def _logits(self, x: Tensor) -> Tensor:
        size = self.resize_to
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        return self._forward_impl(x)

    def _forward_impl(self, x: Tensor) -> Tensor:
        """Logits of an (already resized) image batch."""
        raise NotImplementedError

    def init_from_data(self, images: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        """Data-dependent initialisation from training images (none by default; airnet sets its whitening)."""

    def start_epoch(self, epoch: int, whiten_bias_epochs: int = 3) -> None:
        """Called by the trainer before each epoch (0-based); e.g. airnet freezes its whitening bias."""

    def check_layer(self, name: str, key: str | None = None) -> None:
        """Check that ``name`` is a layer of this model: a stage or any (non-empty) module path.

        Args:
            name: the layer name to check.
            key: the config key or option the name came from (e.g. ``"method.layers"``);
                if given, the message starts with ``"<key>: "``.

        Raises:
            ConfigError: one line naming the layer and the model, listing the valid stages
                and an example module path.
        """
        if isinstance(name, str) and name:
            try:
                self.get_submodule(name)
                return
            except AttributeError:
                pass
        prefix = f"{key}: " if key else ""
        raise ConfigError(f"{prefix}unknown layer {name!r} for {self.name}; valid stages: {', '.join(self.stages)} "
                          f"(or any module path such as {self.example_tap})")



def load_pretrained(model: CamNet, path: str | os.PathLike[str]) -> CamNet:
    """Load weights from ``path`` into ``model`` in place and return it.

    ``path`` holds a state_dict, either raw or nested under ``"state_dict"``,
    ``"model"`` or ``"model_state_dict"``; a leading ``"module."`` (DistributedDataParallel)
    is stripped from the keys. A classifier ``fc`` whose shape differs from the model's
    (or that is absent) is skipped with a warning and keeps its fresh initialisation.
    BatchNorm ``num_batches_tracked`` counters may be absent.

    Raises:
        UserError: missing/unreadable file, or keys/shapes that do not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained weights '{path}' not found; give the path of a saved state_dict (.pt/.pth)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, weights_only checks)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not read pretrained weights '{path}' ({first_line}); "
                        f"save them with torch.save(model.state_dict(), path)") from None
    state = _unwrap_state_dict(loaded)
    if state is None:
        raise UserError(f"pretrained weights '{path}' do not contain a state_dict (parameter name -> tensor); "
                        f"save them with torch.save(model.state_dict(), path)")
    state = {key.removeprefix("module."): value for key, value in state.items()}

    expected = model.state_dict()
    head = f"{getattr(model, 'classifier_path', 'fc')}."
    body = {key: value for key, value in state.items() if not key.startswith(head)}
    problems = _fit_problems(body, expected)
    if problems:
        raise UserError(f"pretrained weights '{path}' do not fit {model.name}: {', '.join(problems)}; "
                        f"expected {_expected_source(model)}")

    fc_state = {key: value for key, value in state.items() if key.startswith(head)}
    fc_expected = {key: value.shape for key, value in expected.items() if key.startswith(head)}
    if {key: value.shape for key, value in fc_state.items()} == fc_expected:
        body.update(fc_state)
    else:
        weight = next((v for k, v in fc_state.items() if k.endswith("weight") or k.endswith("original")), None)
        reason = f"has a classifier for {weight.shape[0]} classes" if weight is not None else f"has no classifier {head[:-1]}"
        n = model.get_submodule(head[:-1]).out_features
        warnings.warn(f"pretrained weights '{path}' {reason} but {model.name} has {n} classes: "
                      f"{head[:-1]} is left randomly initialised", stacklevel=2)
    model.load_state_dict(body, strict=False)
    return model


def _unwrap_state_dict(loaded: object) -> dict[str, Tensor] | None:
    while isinstance(loaded, Mapping):
        inner = next((loaded[key] for key in _WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping) or not loaded:
        return None
    if not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in loaded.items()):
        return None
    return dict(loaded)


def _fit_problems(body: dict[str, Tensor], expected: dict[str, Tensor]) -> list[str]:
    """Describe how ``body`` (a state_dict without ``fc``) fails to fit ``expected``."""
    missing = [key for key in expected
               if key not in body and not key.startswith("fc.") and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in body if key not in expected]
    mismatched = [key for key in body if key in expected and body[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
    if mismatched:
        shapes = [f"{key}: {tuple(body[key].shape)} vs {tuple(expected[key].shape)}" for key in mismatched]
        problems.append(f"{len(mismatched)} with a different shape ({_listing(shapes)})")
    return problems


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED_KEYS])
    return shown + (", ..." if len(items) > _LISTED_KEYS else "")


def _expected_source(model: CamNet) -> str:
    if model.name == "resnet50_imagenet":
        return "a torchvision/timm resnet50 state_dict"
    return f"a state_dict saved from a camssl {model.name} model with the same width"
