"""A user's own backbone for the tests: a plain nn.Module with its own names, loaded as model.name=camssl_test_backbones:small."""

from __future__ import annotations

import torch
from torch import nn


class Small(nn.Module):
    """Two conv stages, a pooled linear head of 1000 classes (camssl replaces it)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.scale = nn.Parameter(torch.ones(()))  # a parameter of the module itself, not of a child
        self.head = nn.Linear(2 * width, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)) * self.scale)


def small(width: int = 8) -> nn.Module:
    return Small(width)
