"""EfficientNet-style: MBConv blocks with squeeze-excitation and SiLU."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms


def conv_bn_silu(in_ch: int, out_ch: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv2d -> BatchNorm2d -> SiLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.SiLU(inplace=True),
    )


class SqueezeExcite(nn.Module):
    """Avg-pool -> 1x1 conv (reduce) -> SiLU -> 1x1 conv (expand) -> sigmoid -> scale."""

    def __init__(self, ch: int, squeeze_ch: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, squeeze_ch, 1)
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_ch, ch, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))


class MBConv(nn.Module):
    """Expand (1x1) -> depthwise kxk -> SE -> project (1x1, no act); residual when possible."""

    def __init__(self, in_ch: int, out_ch: int, k: int, stride: int, expand_ratio: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_silu(in_ch, hidden, 1))
        layers.append(conv_bn_silu(hidden, hidden, k, stride, groups=hidden))
        layers.append(SqueezeExcite(hidden, max(1, int(in_ch * se_ratio))))
        layers.append(nn.Conv2d(hidden, out_ch, 1, bias=False))
        layers.append(nn.BatchNorm2d(out_ch))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = out + x
        return out


class EfficientNet(nn.Module):
    """Stem -> 5 MBConv stages -> 1x1 head conv -> pool -> dropout -> linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        # expand, kernel, stride, in, out, repeats  (EfficientNet-B0 pattern, narrowed)
        setting = [
            (1, 3, 1, 16, 8, 1),
            (6, 3, 2, 8, 12, 2),
            (6, 5, 2, 12, 20, 2),
            (6, 3, 2, 20, 40, 2),
            (6, 5, 1, 40, 56, 1),
        ]
        layers: list[nn.Module] = [conv_bn_silu(3, 16, 3, 2)]
        for e, k, s, cin, cout, n in setting:
            for i in range(n):
                layers.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        layers.append(conv_bn_silu(56, 160, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(160, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build() -> nn.Module:
    """Narrow EfficientNet-B0-like net, 10 classes."""
    return randomize_norms(EfficientNet(num_classes=10))


def example_inputs() -> tuple[torch.Tensor]:
    """One 3x64x64 image."""
    return (torch.randn(1, 3, 64, 64, generator=generator()),)
