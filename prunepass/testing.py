"""Helpers for testing rules: prune every free symbol of a one-op program at random and check
that the rewritten program on sliced inputs equals the sliced original output.

Use it when you register a rule for a custom op::

    from prunepass.testing import check_rule
    check_rule(lambda x, w: my_op(x, w), torch.randn(2, 8), torch.randn(8, 8))
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunepass.capture import capture
from prunepass.dims import Sym
from prunepass.program import Resizer, flat_inputs, rewrite_graph, slice_tensor
from prunepass.propagate import META_KEY, Dataflow, propagate
from prunepass.rules import Registry, default_registry


class _Fn(nn.Module):
    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@dataclass(frozen=True)
class RuleCheck:
    pruned: dict[Sym, int]  # symbol -> channels removed
    origins: tuple[str, ...]  # where each pruned symbol was created
    max_abs_err: float


def free_symbols(flow: Dataflow, include_io: bool = True) -> list[Sym]:
    """Live roots that may be pruned in a rule test: not fixed, not barriers, not approximate."""
    solver = flow.solver
    out = []
    for i in range(len(solver.infos)):
        s = Sym(i)
        if solver.find(s) != s or s in solver.binding or solver.size_of(s) < 2 or s in solver.approx:
            continue
        kinds = {k for k, _ in solver.frozen.get(s, [])}
        if kinds - ({"io"} if include_io else set()):
            continue
        out.append(s)
    return out


def _mask(t: torch.Tensor, dims, rs: Resizer) -> torch.Tensor:
    """Zero the entries of pruned channels, so contractions over them contribute nothing."""
    out = t.clone()
    for axis, d in enumerate(dims):
        keep = torch.zeros(t.shape[axis], dtype=torch.bool)
        keep[rs.indices(d)] = True
        shape = [1] * t.dim()
        shape[axis] = -1
        out = out * keep.view(shape).to(out.dtype)
    return out


def check_rule(fn: Callable, *inputs: torch.Tensor, seed: int = 0, registry: Registry | None = None,
               atol: float = 1e-5, rtol: float = 1e-4) -> RuleCheck:
    """Prune random channels of every free symbol; the rewritten program on sliced inputs must
    equal the sliced output of the original program on inputs whose pruned channels are zero."""
    captured = capture(_Fn(fn), tuple(inputs))
    flow = propagate(captured, registry if registry is not None else default_registry())
    if flow.barriers:
        raise AssertionError("barriers: " + "; ".join(f"%{b.node} {b.op}: {b.reason}" for b in flow.barriers))
    rng = random.Random(seed)
    keep: dict[Sym, list[int]] = {}
    for s in free_symbols(flow):
        n = flow.solver.size_of(s)
        k = rng.randint(1, n - 1)
        keep[s] = sorted(rng.sample(range(n), k))
    rs = Resizer(flow, keep)
    graph = captured.program.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    sliced = [slice_tensor(t, n.meta[META_KEY], rs) if isinstance(t, torch.Tensor) else t
              for n, t in zip(placeholders, inputs, strict=True)]
    gm = rewrite_graph(flow, keep)
    got = gm(*flat_inputs(flow, {}, tuple(sliced), {}))
    masked = [_mask(t, n.meta[META_KEY], rs) if isinstance(t, torch.Tensor) else t
              for n, t in zip(placeholders, inputs, strict=True)]
    ref = captured.program.graph_module(*flat_inputs(flow, {}, tuple(masked), {}))
    out_nodes = list(graph.output_node().args[0])
    worst = 0.0
    for node, r, g in zip(out_nodes, ref, got, strict=True):
        expected = slice_tensor(r, flow.env[node], rs)
        torch.testing.assert_close(g, expected, atol=atol, rtol=rtol)
        if expected.numel():
            worst = max(worst, float((g - expected).abs().max()))
    return RuleCheck({s: flow.solver.size_of(s) - len(v) for s, v in keep.items()},
                     tuple(flow.solver.infos[s.id].origin for s in keep), worst)
