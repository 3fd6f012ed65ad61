"""DenseNet-style: dense blocks that torch.cat each layer's output onto the running map."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) -> BN-ReLU-3x3 conv producing ``growth`` channels."""

    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(out)))


class DenseBlock(nn.Module):
    """Stack of dense layers; x = cat([x, layer(x)], dim=1) after every layer."""

    def __init__(self, n_layers: int, in_ch: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_ch + i * growth, growth) for i in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv (compression) -> 2x2 avg-pool."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    """3x3 stem, dense blocks separated by transitions, final BN-ReLU, pool, linear."""

    def __init__(self, growth: int = 8, blocks: tuple[int, ...] = (3, 3, 3), num_classes: int = 10) -> None:
        super().__init__()
        ch = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, 1, 1, bias=False)]
        for i, n in enumerate(blocks):
            layers.append(DenseBlock(n, ch, growth))
            ch += n * growth
            if i != len(blocks) - 1:
                layers.append(Transition(ch, ch // 2))
                ch //= 2
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build() -> nn.Module:
    """DenseNet with growth 8, blocks (3, 3, 3), compression 0.5, 10 classes."""
    return randomize_norms(DenseNet())


def example_inputs() -> tuple[torch.Tensor]:
    """One 3x32x32 image."""
    return (torch.randn(1, 3, 32, 32, generator=generator()),)
