"""Wide ResNet (WRN-28-2), the standard backbone of CIFAR semi-supervised learning.

Follows FixMatch (google-research/fixmatch ``libml/models.py``): a 3x3 stem conv with
16 channels, three groups of pre-activation wide basic blocks with 32/64/128 channels
(for widen factor 2) and strides 1/2/2, LeakyReLU(0.1), then a final BatchNorm +
LeakyReLU (the ``features`` module) feeding global average pooling and ``fc``.
All channel counts are multiplied by ``width``. The first block activates its input
before the shortcut ("activate_before_residual"), the other blocks project the raw
input. No dropout; no in-place operations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from camssl.models.base import CamNet, conv3x3, init_weights, scale_channels

__all__ = ["WideBasicBlock", "WideResNet"]

_LEAKY_SLOPE = 0.1


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-LReLU-conv3x3-BN-LReLU-conv3x3 plus a shortcut.

    The shortcut is the identity, or a strided 1x1 conv when the shape changes; it
    takes the activated input if ``activate_before_residual`` and the raw input otherwise.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, *, activate_before_residual: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.LeakyReLU(_LEAKY_SLOPE)
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.LeakyReLU(_LEAKY_SLOPE)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.shortcut = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        residual = activated if self.activate_before_residual else x
        if self.shortcut is not None:
            residual = self.shortcut(residual)
        return residual + out


class WideResNet(CamNet):
    """WRN-depth-widen_factor with stages ``layer1``, ``layer2``, ``layer3``, ``features``.

    Args:
        name: model name, used in messages.
        num_classes: classifier outputs.
        depth: total depth; ``(depth - 4)`` must be divisible by 6.
        widen_factor: WRN width k (group channels 16k, 32k, 64k).
        width: extra channel multiplier applied to every layer (1.0 = standard).
        resize_to: see :class:`CamNet`.
    """

    stages = ("layer1", "layer2", "layer3", "features")
    cam_layer = "features"

    def __init__(self, name: str, num_classes: int, *, depth: int = 28, widen_factor: int = 2,
                 width: float = 1.0, resize_to: int | None = None) -> None:
        super().__init__(name, resize_to=resize_to)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        blocks = (depth - 4) // 6
        stem, *groups = (scale_channels(c, width) for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor))
        self.conv1 = conv3x3(3, stem)
        self.layer1 = self._make_group(stem, groups[0], blocks, stride=1, activate_before_residual=True)
        self.layer2 = self._make_group(groups[0], groups[1], blocks, stride=2)
        self.layer3 = self._make_group(groups[1], groups[2], blocks, stride=2)
        self.features = nn.Sequential(nn.BatchNorm2d(groups[2]), nn.LeakyReLU(_LEAKY_SLOPE))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(groups[2], num_classes)
        init_weights(self)
        nn.init.xavier_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def _make_group(in_planes: int, out_planes: int, blocks: int, stride: int, *,
                    activate_before_residual: bool = False) -> nn.Sequential:
        first = WideBasicBlock(in_planes, out_planes, stride, activate_before_residual=activate_before_residual)
        return nn.Sequential(first, *(WideBasicBlock(out_planes, out_planes, 1) for _ in range(1, blocks)))

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))
