"""An airbench94-shaped network as a camssl :class:`~camssl.models.base.CamNet`.

Facts taken from airbench94 (KellerJordan/cifar10-airbench, MIT, ``legacy/airbench94.py`` and
``airbench/lib_airbench94.py``; arXiv 2404.00498):

* ``whiten``: a 2x2 convolution, 3 -> 24 channels, no padding, with bias, followed by GELU.
  Its weights are the eigenvectors of the second-moment matrix ``P^T P / n`` of the
  normalised training images' 2x2 patches (not mean-centred), in decreasing order of
  eigenvalue, each divided by ``sqrt(eigenvalue + eps)`` (eps 5e-4), then the same 12
  filters negated (12 + 12 = 24), computed from the first 5,000 training images; the weight
  is frozen, the bias is trained (airbench freezes it after 3 epochs: the trainer's job).
* three conv groups (``layer1..3``), widths 64/256/256: conv3x3 (padding 1, no bias) ->
  MaxPool2d(2) -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU.
* every conv keeps PyTorch's default initialisation except its first ``in_channels`` output
  filters, which are set to the identity (``nn.init.dirac_``); conv biases start at 0.
* BatchNorm: eps 1e-12, weight (scale) fixed at 1 and not trained, bias trained; airbench's
  momentum 0.6 is the decay of the running statistics, passed to PyTorch as
  ``momentum=1 - 0.6 = 0.4`` (PyTorch: ``running = (1 - m) * running + m * batch``).
* head: ``MaxPool2d(3)`` (on a 32x32 input the last map is 3x3, so this is a global max),
  flatten, a bias-free ``nn.Linear``, logits multiplied by 1/9.

camssl's choices:

* ``pool="max"`` uses a global max (``AdaptiveMaxPool2d(1)``), identical to airbench's
  ``MaxPool2d(3)`` at 32x32 inputs and global at every other size. ``pool="avg"`` (camssl's
  variant) uses global average pooling, so ``layer3`` feeds the classifier linearly and is
  :attr:`cam_layer` (closed-form CAM / Grad-CAM is exact there). With ``pool="max"``
  ``cam_layer`` is ``""`` (the CamNet contract: the cam layer feeds ``fc`` through average
  pooling, which CAM, CAAM and CAM-loss assume), so :func:`camssl.cam.grad_cam` takes the
  autograd route at every layer. Measured fact (tests/test_airnet.py): at ``layer3`` that
  autograd Grad-CAM still equals ``ReLU(sum_k W[c, k] A_k) / hw``, because the gradient sits
  at each channel's argmax and its spatial mean, Grad-CAM's weight, is ``W[c, k] / hw``.
* the logit scale is folded into ``fc.weight`` through a parametrization (the trained
  parameter is ``fc.parametrizations.weight.original``, ``fc.weight`` is ``scale`` times it),
  so ``logits == fc(pooled)`` and ``fc.weight`` is the classifier that CAM and the
  closed-form Grad-CAM read. Training dynamics equal airbench's Linear followed by ``Mul``.
* the whitening statistics are accumulated in float64 in chunks (deterministic, no
  5,000 x 961 x 12 patch matrix in memory); ``width`` scales all three group widths.
* the tap ``whiten`` is the output of the whitening conv after its GELU; each stage tap is
  its group's output after the last GELU.

No operation is in-place, so double backward (gradients of Grad-CAM maps) works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from camssl.errors import ConfigError
from camssl.models.base import CamNet, scale_channels

__all__ = ["AIRNET_POOLS", "AirNet", "ConvGroup", "init_whitening"]

AIRNET_POOLS = ("max", "avg")
DEFAULT_WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # 24
BN_EPS = 1e-12
BN_MOMENTUM = 0.6  # airbench's convention: decay of the running statistics
LOGIT_SCALE = 1.0 / 9.0
WHITEN_EPS = 5e-4
WHITEN_IMAGES = 5000
_CHUNK = 256  # images per chunk of the patch statistics


def _dirac_conv(in_channels: int, out_channels: int, kernel_size: int, *, padding: int, bias: bool) -> nn.Conv2d:
    """A conv with PyTorch's default init, its first ``in_channels`` filters set to the identity (airbench)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: conv.weight.shape[1]])
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with a fixed scale of 1 (not trained), a trained bias, eps 1e-12 and airbench's momentum."""
    norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=1.0 - BN_MOMENTUM)
    norm.weight.requires_grad_(False)
    return norm


class Whiten(nn.Module):
    """The 2x2 patch-whitening conv (frozen weight, trained bias) followed by GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _dirac_conv(3, WHITEN_WIDTH, WHITEN_KERNEL, padding=0, bias=True)
        self.conv.weight.requires_grad_(False)
        self.activ = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.activ(self.conv(x))


class ConvGroup(nn.Module):
    """conv3x3 -> MaxPool2d(2) -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench's ConvGroup)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _dirac_conv(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batch_norm(out_channels)
        self.conv2 = _dirac_conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _batch_norm(out_channels)
        self.activ = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class _Scale(nn.Module):
    """Parametrization ``w -> scale * w``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.scale


class AirNet(CamNet):
    """airbench94-shaped classifier (see the module docstring for facts and camssl's choices).

    Args:
        name: model name, used in messages.
        num_classes: classifier outputs.
        widths: channels of the three conv groups (airbench: 64, 256, 256).
        pool: ``"max"`` (airbench's global max-pool) or ``"avg"`` (camssl's variant with an
            exact closed-form CAM at ``layer3``).
        logit_scale: factor applied to the logits (airbench: 1/9), folded into ``fc.weight``.
        resize_to: see :class:`~camssl.models.base.CamNet`.

    Raises:
        ConfigError: invalid widths, pool or logit_scale.
    """

    stages = ("whiten", "layer1", "layer2", "layer3")
    example_tap = "layer2.conv1"

    def __init__(self, name: str, num_classes: int, *, widths: Sequence[int] = DEFAULT_WIDTHS, pool: str = "max",
                 logit_scale: float = LOGIT_SCALE, resize_to: int | None = None) -> None:
        super().__init__(name, resize_to=resize_to)
        widths = _check_widths(widths)
        if pool not in AIRNET_POOLS:
            raise ConfigError(f"model.pool={pool!r} is invalid for airnet: choose one of {', '.join(AIRNET_POOLS)}")
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, int | float) \
                or not math.isfinite(logit_scale) or logit_scale <= 0:
            raise ConfigError(f"airnet logit_scale={logit_scale!r} is invalid: give a number > 0 (airbench: 1/9)")
        self.widths = widths
        self.pool_kind = pool
        self.cam_layer = "layer3" if pool == "avg" else ""
        self.whiten = Whiten()
        self.layer1 = ConvGroup(WHITEN_WIDTH, widths[0])
        self.layer2 = ConvGroup(widths[0], widths[1])
        self.layer3 = ConvGroup(widths[1], widths[2])
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        parametrize.register_parametrization(self.fc, "weight", _Scale(float(logit_scale)))

    def init_from_data(self, images: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        """The whitening filters from the first 5,000 of ``images`` (:func:`init_whitening`)."""
        init_whitening(self, images, mean, std)

    def start_epoch(self, epoch: int, whiten_bias_epochs: int = 3) -> None:
        """The whitening bias trains for the first ``whiten_bias_epochs`` epochs, then is frozen (airbench)."""
        self.whiten.conv.bias.requires_grad_(epoch < whiten_bias_epochs)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.whiten(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _check_widths(widths: object) -> tuple[int, int, int]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) != 3 \
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ConfigError(f"airnet widths={widths!r} is invalid: give three positive integers, e.g. [64, 256, 256]")
    return (int(widths[0]), int(widths[1]), int(widths[2]))


def scaled_widths(width: float) -> tuple[int, int, int]:
    """airbench's widths 64/256/256 times ``width`` (rounded, at least 4 each)."""
    a, b, c = (scale_channels(w, width) for w in DEFAULT_WIDTHS)
    return (a, b, c)


@torch.no_grad()
def init_whitening(model: AirNet, images: Tensor, mean: Sequence[float], std: Sequence[float], *,
                   eps: float = WHITEN_EPS, max_images: int = WHITEN_IMAGES) -> Tensor:
    """Set ``model.whiten.conv.weight`` from the 2x2 patches of the first ``max_images`` training images.

    Follows airbench94: normalise the images with ``mean``/``std``, take every 2x2 patch
    (stride 1), form the second-moment matrix ``P^T P / n`` (12x12, not mean-centred), and
    set the 24 filters to its eigenvectors (decreasing eigenvalue) divided by
    ``sqrt(eigenvalue + eps)``, followed by their negatives. Deterministic: the first
    ``max_images`` images, float64 statistics. The bias is left as it is.

    Args:
        model: an :class:`AirNet`.
        images: ``N×3×H×W`` uint8, or float in ``[0, 1]``, training images (any device).
        mean, std: the per-channel normalisation the model's inputs get.
        eps: added to each eigenvalue (airbench: 5e-4).
        max_images: use at most this many images (airbench: 5,000).

    Returns:
        The eigenvalues (12, float64, decreasing), e.g. for a check of the conditioning.
    """
    if not isinstance(model, AirNet):
        raise TypeError(f"init_whitening needs an AirNet, got {type(model).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"expected training images of shape N×3×H×W, got {tuple(images.shape)}")
    weight = model.whiten.conv.weight
    kernel = weight.shape[2:]
    mean_t = torch.tensor(mean, dtype=torch.float64, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64, device=images.device).view(1, 3, 1, 1)
    images = images[:max_images]
    moment = torch.zeros(12, 12, dtype=torch.float64, device=images.device)
    count = 0
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start:start + _CHUNK].to(torch.float64)
        if images.dtype == torch.uint8:
            chunk = chunk / 255.0
        patches = F.unfold((chunk - mean_t) / std_t, kernel_size=kernel)  # n×(3·2·2)×L, (c, h, w) order
        flat = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        moment += flat.T @ flat
        count += flat.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(moment / count)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, *weight.shape[1:])
    weight.copy_(torch.cat([filters, -filters]).to(device=weight.device, dtype=weight.dtype))
    return eigenvalues
