"""ShuffleNetV2 (0.5x): channel split via chunk, two-branch stride-2 units, channel shuffle."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """view(B, g, C//g, H, W) -> transpose(1, 2) -> contiguous -> view(B, C, H, W)."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    x = x.transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """Stride 1: chunk input in two, transform one half.  Stride 2: two branches on the full input.
    Outputs are concatenated and channel-shuffled."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.groups = 2
        branch_ch = out_ch // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
                nn.BatchNorm2d(in_ch),
                nn.Conv2d(in_ch, branch_ch, 1, bias=False),
                nn.BatchNorm2d(branch_ch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        b2_in = in_ch if stride > 1 else branch_ch
        self.branch2 = nn.Sequential(
            nn.Conv2d(b2_in, branch_ch, 1, bias=False),
            nn.BatchNorm2d(branch_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch_ch, branch_ch, 3, stride, 1, groups=branch_ch, bias=False),
            nn.BatchNorm2d(branch_ch),
            nn.Conv2d(branch_ch, branch_ch, 1, bias=False),
            nn.BatchNorm2d(branch_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, self.groups)


class ShuffleNetV2(nn.Module):
    """3x3/2 stem, max-pool, 3 stages (first unit stride 2), 1x1 conv, global mean, fc."""

    def __init__(
        self,
        repeats: tuple[int, int, int] = (2, 4, 2),
        channels: tuple[int, int, int, int, int] = (24, 48, 96, 192, 1024),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = channels[0]
        stages = []
        for n, out_ch in zip(repeats, channels[1:4], strict=True):
            units = [ShuffleUnit(in_ch, out_ch, 2)] + [ShuffleUnit(out_ch, out_ch, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_ch, channels[4], 1, bias=False), nn.BatchNorm2d(channels[4]), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def build() -> nn.Module:
    """ShuffleNetV2 0.5x channels (24/48/96/192), repeats 2/4/2 (paper: 4/8/4), final conv 512, 10 classes."""
    return randomize_norms(ShuffleNetV2(channels=(24, 48, 96, 192, 512)))


def example_inputs() -> tuple[torch.Tensor]:
    """One 3x64x64 image."""
    return (torch.randn(1, 3, 64, 64, generator=generator()),)
