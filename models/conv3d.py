"""3-d conv video net: Conv3d/BatchNorm3d/ReLU, identity and strided residual blocks, global pool."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms


class ResBlock3d(nn.Module):
    """conv3x3x3-BN-ReLU-conv3x3x3-BN + shortcut (1x1x1 conv+BN when stride/width change), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm3d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class Conv3dNet(nn.Module):
    """Stem (spatial stride 2), conv stage, identity res block, strided res block, pool, fc."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, 8, 3, (1, 2, 2), 1, bias=False), nn.BatchNorm3d(8), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(nn.Conv3d(8, 16, 3, 1, 1, bias=False), nn.BatchNorm3d(16), nn.ReLU(inplace=True))
        self.res1 = ResBlock3d(16, 16)
        self.res2 = ResBlock3d(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res2(self.res1(self.conv2(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def build() -> nn.Module:
    """Small 3-d CNN for clips, 10 classes."""
    return randomize_norms(Conv3dNet())


def example_inputs() -> tuple[torch.Tensor]:
    """One clip [1, 3, 8, 32, 32] (C, T, H, W)."""
    return (torch.randn(1, 3, 8, 32, 32, generator=generator()),)
