"""Uniform pruning: the same ratio of channels removed in every prunable group."""

from __future__ import annotations

from typing import Any

from prunepass.analysis import Analysis
from prunepass.plan import Plan
from prunepass.select.constraints import ChannelConstraint, nearest_allowed


def uniform_widths(analysis: Analysis, ratio: float, constraint: ChannelConstraint | None = None,
                   include_approximate: bool = True) -> dict[str, int]:
    """Width per prunable group after removing ``ratio`` of its channels."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    out = {}
    for g in analysis.prunable_groups:
        if g.is_approximate and not include_approximate:
            continue
        out[g.name] = nearest_allowed(g, g.size * (1.0 - ratio), constraint)
    return out


def uniform_plan(analysis: Analysis, ratio: float, scores: dict[str, Any] | None = None,
                 constraint: ChannelConstraint | None = None, **meta: Any) -> Plan:
    """Keep the most important ``1 - ratio`` of every group (the first channels without scores)."""
    widths = uniform_widths(analysis, ratio, constraint)
    return Plan.from_widths(analysis, widths, scores, strategy="uniform", ratio=ratio, **meta)
