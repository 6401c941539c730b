"""ResNet backbones.

Two stems share one implementation:

* ``"cifar"`` (``resnet18``/``resnet34``/``resnet50``): 3x3 stride-1 stem conv, no
  max-pool, so a 32x32 input gives 32/16/8/4-pixel stages.
* ``"imagenet"`` (``resnet50_imagenet``): torchvision's ResNet-50 (v1.5: stride on the
  3x3 conv of the bottleneck) with identical parameter and buffer names, so torchvision
  and timm ``resnet50`` state_dicts load directly.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``). Stage widths are ``64, 128, 256, 512`` times
``width`` (times 4 at the output of bottleneck stages). No operation is in-place, so
double backward (gradients of Grad-CAM maps) works.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from camssl.models.base import CamNet, conv3x3, init_weights, scale_channels

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), as in torchvision's ResNet v1.5."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(CamNet):
    """ResNet with a CIFAR (3x3, no max-pool) or ImageNet (7x7/2 + max-pool) stem.

    Args:
        name: model name, used in messages.
        block: residual block type.
        layers: number of blocks in each of the four stages.
        num_classes: classifier outputs.
        stem: ``"cifar"`` or ``"imagenet"``.
        width: channel multiplier (1.0 = standard widths).
        resize_to: see :class:`CamNet`.
    """

    stages = ("layer1", "layer2", "layer3", "layer4")
    cam_layer = "layer4"

    def __init__(self, name: str, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int],
                 num_classes: int, *, stem: Literal["cifar", "imagenet"], width: float = 1.0,
                 resize_to: int | None = None) -> None:
        super().__init__(name, resize_to=resize_to)
        planes = [scale_channels(c, width) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(3, self.inplanes)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        init_weights(self)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        modules = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        modules.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*modules)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
