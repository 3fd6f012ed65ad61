"""Residual CNN for 8x8 scikit-learn digits, wide enough that compute, not per-operator overhead,
sets its onnxruntime latency (the tiny ``digits_cnn`` runs in ~0.01-0.03 ms at batch 1, where no
channel pruning reaches half of its latency)."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms
from .resnet import BasicBlock


class DigitsResNet(nn.Module):
    """3x3 stem, three BasicBlocks (8x8 -> 4x4 -> 2x2), global average pool, linear classifier.

    The stem's output and the first block's residual sum are one channel group; each block has
    an inner group and the strided blocks a 1x1 conv+BN shortcut.
    """

    def __init__(self, width: int = 48, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def build() -> nn.Module:
    """Digits ResNet, 10 classes."""
    return randomize_norms(DigitsResNet())


def example_inputs() -> tuple[torch.Tensor]:
    """One 1x8x8 image scaled like sklearn digits (values in [0, 16])."""
    return (torch.rand(1, 1, 8, 8, generator=generator()) * 16.0,)
