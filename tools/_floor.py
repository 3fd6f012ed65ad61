"""How fast can a latency search go?  Networks at the floor of a search space, for the benchmarks
(run them as ``python tools/NAME.py``; tools/ is on sys.path).

The narrowest network (every group at its smallest allowed width) is not always the fastest:
onnxruntime's CPU kernels block channels by 8 or 16, and on an AVX-512 machine the zoo's
mobilenet_v2 with every group at 16 channels timed 0.40 of the original against 0.54 at 8.  So
the floor is the fastest of the *uniform* networks with every channel group at ``k`` steps
(k = 1..4; head-count groups at their fewest heads), each timed as deployed."""

from __future__ import annotations

from typing import Any

from torch import nn

import prunepass
from prunepass.api import latency_constraint
from prunepass.plan import Plan
from prunepass.rewrite import apply_plan
from prunepass.select.constraints import ChannelConstraint, uniform_widths

FLOOR_STEPS = (1, 2, 3, 4)  # every channel group at k latency steps


def floor_widths(analysis: Any, constraint: ChannelConstraint | None = None) -> dict[str, dict[str, int]]:
    """``{label: widths}`` for each distinct uniform floor network: every channel group at the
    smallest allowed width of at least ``k * step`` channels (its full size when it has fewer),
    every head-count group at its fewest heads."""
    c = latency_constraint(constraint)
    out: dict[str, dict[str, int]] = {}
    for k in FLOOR_STEPS:
        widths = uniform_widths(analysis.prunable_groups, c, k * c.step)
        if widths not in out.values():
            out[f"every group at {k * c.step}"] = widths
    return out


def floor_models(model: nn.Module, args: tuple, constraint: ChannelConstraint | None = None,
                 analysis: Any = None) -> dict[str, nn.Module]:
    """The floor networks of :func:`floor_widths`, pruned copies of ``model`` (eval mode)."""
    a = analysis or prunepass.analyze(model, args)
    return {label: apply_plan(model, a, Plan.from_widths(a, w), inplace=False).eval()
            for label, w in floor_widths(a, constraint).items()}
