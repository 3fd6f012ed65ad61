"""Tiny CNN for 8x8 scikit-learn digits: Conv2d/BN/ReLU, max-pools, flatten into an MLP head."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms


class DigitsCNN(nn.Module):
    """3 conv-BN-ReLU layers, two 2x2 max-pools (8->4->2), flatten (C*2*2) -> Linear -> ReLU -> Linear.

    The flatten feeds a Linear whose inputs are grouped 4 per conv channel.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 2 * 2, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build() -> nn.Module:
    """Digits CNN, 10 classes."""
    return randomize_norms(DigitsCNN())


def example_inputs() -> tuple[torch.Tensor]:
    """One 1x8x8 image scaled like sklearn digits (values in [0, 16])."""
    return (torch.rand(1, 1, 8, 8, generator=generator()) * 16.0,)
