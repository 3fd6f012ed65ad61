"""YOLO/CSP-style detector: CSP channel splits, C2f chunk blocks, SPPF, FPN concat, detect convs."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, randomize_norms


class ConvBNSiLU(nn.Module):
    """Conv2d -> BatchNorm2d -> SiLU (the YOLO ``Conv`` unit)."""

    def __init__(self, in_ch: int, out_ch: int, k: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 conv with optional residual add."""

    def __init__(self, ch: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvBNSiLU(ch, ch, 1)
        self.cv2 = ConvBNSiLU(ch, ch, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class CSPBlock(nn.Module):
    """1x1 conv, torch.split the channels in half (sizes from x.shape), bottlenecks on one half,
    cat both halves, 1x1 fuse conv."""

    def __init__(self, in_ch: int, out_ch: int, n: int = 1) -> None:
        super().__init__()
        hidden = out_ch // 2
        self.cv1 = ConvBNSiLU(in_ch, 2 * hidden, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden) for _ in range(n)])
        self.cv2 = ConvBNSiLU(2 * hidden, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        c = y.shape[1] // 2
        a, b = torch.split(y, [c, y.shape[1] - c], dim=1)
        return self.cv2(torch.cat([a, self.m(b)], dim=1))


class C2f(nn.Module):
    """YOLOv8 C2f: cv1, chunk(2, dim=1), chain of bottlenecks each appended, cat all, cv2."""

    def __init__(self, in_ch: int, out_ch: int, n: int = 1) -> None:
        super().__init__()
        hidden = out_ch // 2
        self.cv1 = ConvBNSiLU(in_ch, 2 * hidden, 1)
        self.m = nn.ModuleList(Bottleneck(hidden, shortcut=False) for _ in range(n))
        self.cv2 = ConvBNSiLU((2 + n) * hidden, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, dim=1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, cat with input, 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, k: int = 5) -> None:
        super().__init__()
        hidden = in_ch // 2
        self.cv1 = ConvBNSiLU(in_ch, hidden, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)
        self.cv2 = ConvBNSiLU(hidden * 4, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        y3 = self.m(y2)
        return self.cv2(torch.cat([x, y1, y2, y3], dim=1))


class YOLOCSP(nn.Module):
    """CSP backbone -> SPPF -> upsample+concat neck -> two 1x1 detect convs.

    Returns a single tensor [B, anchors*(5+classes), H3*W3 + H4*W4] (both scales flattened & cat).
    """

    def __init__(self, num_classes: int = 4, num_anchors: int = 3) -> None:
        super().__init__()
        no = num_anchors * (5 + num_classes)
        self.stem = nn.Sequential(ConvBNSiLU(3, 8, 3, 2), ConvBNSiLU(8, 16, 3, 2), CSPBlock(16, 16, 1))
        self.stage3 = nn.Sequential(ConvBNSiLU(16, 32, 3, 2), CSPBlock(32, 32, 2))
        self.stage4 = nn.Sequential(ConvBNSiLU(32, 64, 3, 2), CSPBlock(64, 64, 1), SPPF(64, 64))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck3 = C2f(64 + 32, 32, 1)
        self.down = ConvBNSiLU(32, 32, 3, 2)
        self.neck4 = C2f(32 + 64, 64, 1)
        self.detect3 = nn.Conv2d(32, no, 1)
        self.detect4 = nn.Conv2d(64, no, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.stage3(self.stem(x))
        p4 = self.stage4(p3)
        n3 = self.neck3(torch.cat([self.upsample(p4), p3], dim=1))
        n4 = self.neck4(torch.cat([self.down(n3), p4], dim=1))
        out3 = self.detect3(n3).flatten(2)
        out4 = self.detect4(n4).flatten(2)
        return torch.cat([out3, out4], dim=2)


def build() -> nn.Module:
    """YOLO/CSP detector with 4 classes and 3 anchors per cell at strides 8 and 16."""
    return randomize_norms(YOLOCSP())


def example_inputs() -> tuple[torch.Tensor]:
    """One 3x64x64 image."""
    return (torch.randn(1, 3, 64, 64, generator=generator()),)
