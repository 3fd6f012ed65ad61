"""Small helpers shared by the reference models."""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (MobileNet convention)."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def generator(seed: int = 0) -> torch.Generator:
    """Return a CPU generator seeded with ``seed`` (used for example inputs)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@torch.no_grad()
def randomize_norms(model: nn.Module) -> nn.Module:
    """Give normalisation layers non-trivial affine params / running stats.

    Freshly built norms have weight=1, bias=0, mean=0, var=1, which makes
    norm-based channel importance degenerate (all ties).  Uses the global RNG,
    so the result is deterministic under ``torch.manual_seed``.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            if m.running_mean is not None:
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.weight.uniform_(0.8, 1.2)
            if m.bias is not None:
                m.bias.normal_(0.0, 0.02)
        elif type(m).__name__ == "RMSNorm" and isinstance(getattr(m, "weight", None), nn.Parameter):
            m.weight.uniform_(0.8, 1.2)
    return model
