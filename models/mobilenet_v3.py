"""MobileNetV3-Small: depthwise convs, squeeze-excitation with hardsigmoid, hardswish."""

from __future__ import annotations

import torch
from torch import nn

from ._common import generator, make_divisible, randomize_norms


class SqueezeExcitation(nn.Module):
    """Adaptive avg-pool -> 1x1 conv -> ReLU -> 1x1 conv -> hardsigmoid -> channel scale."""

    def __init__(self, ch: int, squeeze_ch: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, squeeze_ch, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_ch, ch, 1)
        self.scale_act = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_act(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return x * s


def conv_bn_act(
    in_ch: int, out_ch: int, k: int, stride: int, groups: int, act: type[nn.Module] | None
) -> nn.Sequential:
    """Conv2d -> BatchNorm2d -> optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidualSE(nn.Module):
    """Bneck block: optional 1x1 expand, kxk depthwise, optional SE, 1x1 projection."""

    def __init__(self, in_ch: int, k: int, exp_ch: int, out_ch: int, use_se: bool, act: str, stride: int) -> None:
        super().__init__()
        act_layer: type[nn.Module] = nn.Hardswish if act == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if exp_ch != in_ch:
            layers.append(conv_bn_act(in_ch, exp_ch, 1, 1, 1, act_layer))
        layers.append(conv_bn_act(exp_ch, exp_ch, k, stride, exp_ch, act_layer))
        if use_se:
            layers.append(SqueezeExcitation(exp_ch, make_divisible(exp_ch // 4)))
        layers.append(conv_bn_act(exp_ch, out_ch, 1, 1, 1, None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = out + x
        return out


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small layout (9 of the 11 bnecks: one repeat of each residual pair dropped), width mult."""

    def __init__(self, num_classes: int = 10, width_mult: float = 0.5) -> None:
        super().__init__()

        def c(ch: int) -> int:
            return make_divisible(ch * width_mult)

        # in, kernel, expanded, out, SE, activation, stride
        setting = [
            (16, 3, 16, 16, True, "RE", 2),
            (16, 3, 72, 24, False, "RE", 2),
            (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2),
            (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1),
            (48, 5, 144, 48, True, "HS", 1),
            (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1),
        ]
        layers: list[nn.Module] = [conv_bn_act(3, c(16), 3, 2, 1, nn.Hardswish)]
        for in_ch, k, exp, out, se, act, s in setting:
            layers.append(InvertedResidualSE(c(in_ch), k, c(exp), c(out), se, act, s))
        last_conv = 6 * c(96)
        layers.append(conv_bn_act(c(96), last_conv, 1, 1, 1, nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_channel = c(1024)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build() -> nn.Module:
    """MobileNetV3-Small, width multiplier 0.5, 10 classes."""
    return randomize_norms(MobileNetV3Small(num_classes=10, width_mult=0.5))


def example_inputs() -> tuple[torch.Tensor]:
    """One 3x64x64 image."""
    return (torch.randn(1, 3, 64, 64, generator=generator()),)
