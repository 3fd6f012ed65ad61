"""UNet: max-pool encoder, decoder mixing ConvTranspose2d, F.interpolate and nn.Upsample, cat skips."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import generator, randomize_norms


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) x 2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """4-level UNet.  Up levels 4 and 3 use ConvTranspose2d, level 2 uses F.interpolate + 1x1 conv,
    level 1 uses nn.Upsample (bilinear) + 1x1 conv; every level concatenates its encoder skip."""

    def __init__(self, in_ch: int = 3, num_classes: int = 2, base: int = 8) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = base, base * 2, base * 4, base * 8, base * 16
        self.enc1 = DoubleConv(in_ch, c1)
        self.enc2 = DoubleConv(c1, c2)
        self.enc3 = DoubleConv(c2, c3)
        self.enc4 = DoubleConv(c3, c4)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(c4, c5)
        self.up4 = nn.ConvTranspose2d(c5, c4, 2, stride=2)
        self.dec4 = DoubleConv(c4 * 2, c4)
        self.up3 = nn.ConvTranspose2d(c4, c3, 2, stride=2)
        self.dec3 = DoubleConv(c3 * 2, c3)
        self.up2_conv = nn.Conv2d(c3, c2, 1)
        self.dec2 = DoubleConv(c2 * 2, c2)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.up1_conv = nn.Conv2d(c2, c1, 1)
        self.dec1 = DoubleConv(c1 * 2, c1)
        self.head = nn.Conv2d(c1, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        b = self.bottleneck(self.pool(e4))
        d4 = self.dec4(torch.cat([self.up4(b), e4], dim=1))
        d3 = self.dec3(torch.cat([self.up3(d4), e3], dim=1))
        u2 = F.interpolate(d3, size=e2.shape[-2:], mode="nearest")
        d2 = self.dec2(torch.cat([self.up2_conv(u2), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1_conv(self.up1(d2)), e1], dim=1))
        return self.head(d1)


def build() -> nn.Module:
    """UNet, base width 8, 4 down/up levels, 2 output classes (per-pixel logits)."""
    return randomize_norms(UNet())


def example_inputs() -> tuple[torch.Tensor]:
    """One 3x64x64 image."""
    return (torch.randn(1, 3, 64, 64, generator=generator()),)
