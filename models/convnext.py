"""ConvNeXt-style: 7x7 depthwise conv, channels-last LayerNorm + MLP, layer-scale, residual."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms


class LayerNorm2d(nn.Module):
    """Channels-first LayerNorm: permute to NHWC, nn.LayerNorm over C, permute back."""

    def __init__(self, ch: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(ch, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv7x7 -> NHWC -> LayerNorm -> Linear(4C) -> GELU -> Linear(C) -> gamma* -> NCHW -> +x."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)
        return shortcut + x


class ConvNeXt(nn.Module):
    """Patchify stem (4x4/4 + LN), 4 stages with LN+2x2/2 conv downsampling, mean-pool, LN, head."""

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 2, 4, 2),
        dims: tuple[int, ...] = (16, 32, 64, 128),
        num_classes: int = 10,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0])))
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(d, layer_scale_init) for _ in range(n)])
            for d, n in zip(dims, depths, strict=True)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean(dim=(-2, -1))))


def build() -> nn.Module:
    """ConvNeXt depths (2, 2, 4, 2), dims 16..128, 10 classes.

    Layer-scale starts at 0.1 (paper: 1e-6) so blocks contribute measurably with random weights.
    """
    return randomize_norms(ConvNeXt(layer_scale_init=0.1))


def example_inputs() -> tuple[torch.Tensor]:
    """One 3x64x64 image."""
    return (torch.randn(1, 3, 64, 64, generator=generator()),)
