"""Search-space profile: cost of the min / centroid / max sub-nets (the ModelOpt ``profile``)."""

from __future__ import annotations

import math
from typing import Any

from prunepass.analysis import Analysis
from prunepass.costs import CostModel
from prunepass.plan import Plan
from prunepass.select.constraints import ChannelConstraint, allowed_widths, warn_unmatched_rules


def subnet_widths(a: Analysis, constraint: ChannelConstraint | None = None) -> dict[str, dict[str, int]]:
    """Widths of the min, centroid and max sub-nets."""
    out: dict[str, dict[str, int]] = {"min": {}, "centroid": {}, "max": {}}
    for g in a.prunable_groups:
        opts = allowed_widths(g, constraint)
        out["min"][g.name], out["centroid"][g.name], out["max"][g.name] = opts[0], opts[len(opts) // 2], opts[-1]
    return out


def profile_analysis(a: Analysis, constraint: ChannelConstraint | None = None, *, latency: bool = False,
                     cost: CostModel | None = None) -> dict[str, Any]:
    cost = cost or CostModel(a)
    warn_unmatched_rules(a.prunable_groups, constraint, stacklevel=2)
    subnets = subnet_widths(a, constraint)
    choices = [len(allowed_widths(g, constraint)) for g in a.prunable_groups]
    stats: dict[str, Any] = {
        "search_space_size": float(math.prod(choices)) if choices else 1.0,
        "configurable": sum(c > 1 for c in choices),
        "prunable_groups": len(a.prunable_groups),
        "unprunable_groups": len(a.unprunable_groups),
    }
    base_f, base_p = cost.flops(), cost.params()
    oracle = None
    if latency:
        from prunepass.select.targets import LatencyOracle

        oracle = LatencyOracle(a, runs=60)
    for name, widths in subnets.items():
        f, p = cost.flops(widths), cost.params(widths)
        entry = {"flops": f, "params": p, "flops_ratio": f / base_f if base_f else 1.0,
                 "params_ratio": p / base_p if base_p else 1.0, "widths": widths}
        if oracle is not None and name != "centroid":
            entry["latency_ms"] = oracle(Plan.from_widths(a, widths))
        stats[name] = entry
    return stats
