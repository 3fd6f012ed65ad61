"""1-d conv audio classifier: Conv1d/BatchNorm1d/ReLU, residual blocks, MaxPool1d, global pool."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms


class ResBlock1d(nn.Module):
    """conv3-BN-ReLU-conv3-BN + identity, ReLU."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + x)


class Audio1dNet(nn.Module):
    """Wide strided stem on raw waveform, two conv/pool stages with residual blocks, avg pool, fc."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, 16, 80, stride=4, bias=False), nn.BatchNorm1d(16), nn.ReLU(inplace=True), nn.MaxPool1d(4)
        )
        self.block1 = ResBlock1d(16)
        self.conv2 = nn.Sequential(
            nn.Conv1d(16, 32, 3, padding=1, bias=False), nn.BatchNorm1d(32), nn.ReLU(inplace=True), nn.MaxPool1d(4)
        )
        self.block2 = ResBlock1d(32)
        self.conv3 = nn.Sequential(
            nn.Conv1d(32, 64, 3, padding=1, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.stem(x))
        x = self.block2(self.conv2(x))
        x = self.pool(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


def build() -> nn.Module:
    """Raw-waveform 1-d CNN with 10 classes."""
    return randomize_norms(Audio1dNet())


def example_inputs() -> tuple[torch.Tensor]:
    """One mono waveform of 1600 samples: [1, 1, 1600]."""
    return (torch.randn(1, 1, 1600, generator=generator()),)
