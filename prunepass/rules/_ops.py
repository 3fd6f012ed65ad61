"""Resolve aten overload objects for rule registration (missing overloads are skipped, so the
rule tables work across torch versions)."""

from __future__ import annotations

import torch

aten = torch.ops.aten


def overloads(*specs: str) -> list[torch._ops.OpOverload]:
    """``overloads("relu.default", "add.Tensor")`` -> the overload objects that exist."""
    out = []
    for spec in specs:
        name, _, overload = spec.partition(".")
        packet = getattr(aten, name, None)
        if packet is None:
            continue
        op = getattr(packet, overload or "default", None)
        if op is not None:
            out.append(op)
    return out


def with_inplace(*specs: str) -> list[str]:
    """Each ``name.overload`` plus its in-place ``name_.overload`` variant."""
    out = []
    for spec in specs:
        name, _, overload = spec.partition(".")
        out += [spec, f"{name}_.{overload or 'default'}"]
    return out
