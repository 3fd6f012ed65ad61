"""The dataflow pass: walk the exported graph once, let each op's rule relate the channel
expressions of its inputs and outputs, and check every result against the recorded shape.

Results live in ``node.meta["prunepass"]`` (the output dims of that node) and in the returned
:class:`Dataflow`.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field

import torch
from torch import fx

from prunepass.capture import Captured
from prunepass.dims import Dim
from prunepass.rules import Registry, RuleContext, Unsupported
from prunepass.rules.base import Outputs, tensor_args
from prunepass.solver import Solver

log = logging.getLogger(__name__)

META_KEY = "prunepass"


@dataclass(frozen=True)
class Barrier:
    """A node whose channel dims could not be reasoned about."""

    node: str
    op: str
    reason: str


@dataclass
class Dataflow:
    captured: Captured
    solver: Solver
    env: dict[fx.Node, Outputs]
    roles: dict[tuple[str, int], str]
    barriers: list[Barrier] = field(default_factory=list)
    placeholder_kinds: dict[str, str] = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def graph(self) -> fx.Graph:
        return self.captured.program.graph


def propagate(captured: Captured, registry: Registry, options: dict | None = None) -> Dataflow:
    """Run the channel dataflow over ``captured``'s graph.  ``options`` reach every rule."""
    solver = Solver()
    env: dict[fx.Node, Outputs] = {}
    kinds = {name: gi.kind for name, gi in captured.inputs.items()}
    flow = Dataflow(captured, solver, env, {}, placeholder_kinds=kinds, options=dict(options or {}))
    for node in captured.program.graph.nodes:
        if node.op == "placeholder":
            env[node] = _placeholder(flow, node)
        elif node.op == "call_function":
            n_fail = len(solver.failures)
            env[node] = _call(flow, registry, node)
            for reason in solver.failures[n_fail:]:
                flow.barriers.append(Barrier(node.name, str(node.target), f"unification failed: {reason}"))
        elif node.op == "output":
            _output(flow, node)
        else:
            env[node] = None
        if env.get(node) is not None:
            node.meta[META_KEY] = env[node]
    return flow


def _placeholder(flow: Dataflow, node: fx.Node) -> Outputs:
    alias = flow.captured.aliases.get(node.name)
    if alias is not None:  # a tied weight: the very same channels as its first occurrence
        return next(flow.env[n] for n in flow.env if n.name == alias)
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    gi = flow.captured.inputs.get(node.name)
    kind = gi.kind if gi is not None else "input"
    label = gi.target if gi is not None and gi.target else node.name
    dims = []
    for i, n in enumerate(val.shape):
        n = int(n)
        if n == 1:
            dims.append(Dim.const(1))
            continue
        d = Dim.sym(flow.solver.new_sym(n, f"{label}[{i}]"))
        if kind == "input":
            flow.solver.freeze(d, "io", f"graph input '{label}' dim {i}")
        elif kind not in ("parameter", "buffer"):
            flow.solver.freeze(d, "barrier", f"lifted constant tensor '{label}' cannot be sliced in the model")
        dims.append(d)
    return dims


def _call(flow: Dataflow, registry: Registry, node: fx.Node) -> Outputs:
    if node.target is operator.getitem:
        src = flow.env.get(node.args[0])
        if isinstance(src, tuple):
            return src[node.args[1]]
        return None
    rule = registry.get(node.target)
    ctx = RuleContext(flow.solver, flow.env, node, flow.roles, flow.placeholder_kinds, options=flow.options)
    if rule is None:
        return _barrier(flow, node, f"no rule for {node.target}; register one with "
                        f"Registry.register({_qualified(node.target)})")
    try:
        out = rule(ctx, node)
    except Unsupported as exc:
        return _barrier(flow, node, f"rule {rule.__name__} does not support this call: {exc}")
    return _self_check(flow, node, out)


def _qualified(target) -> str:
    return f"torch.ops.{target}" if isinstance(target, torch._ops.OpOverload) else repr(target)


def _recorded_shapes(node: fx.Node):
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    if isinstance(val, (tuple, list)):
        return tuple(tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else None for v in val)
    return None


def _self_check(flow: Dataflow, node: fx.Node, out: Outputs) -> Outputs:
    """Sizes predicted by the rule must equal the shapes torch.export recorded."""
    recorded = _recorded_shapes(node)
    if out is None or recorded is None:
        return out if recorded is not None else None
    tensor = isinstance(node.meta.get("val"), torch.Tensor)
    pairs = [(out, recorded)] if tensor else list(zip(out, recorded, strict=False))
    for dims, shape in pairs:
        if dims is None or shape is None:
            continue
        predicted = tuple(flow.solver.size(d) for d in dims)
        if predicted != shape:
            return _barrier(flow, node, f"self-check failed: rule predicted {list(predicted)} "
                            f"but export recorded {list(shape)} (a rule bug; please report it)")
    if not tensor and len(out) != len(recorded):
        return _barrier(flow, node, "self-check failed: wrong number of outputs")
    return out


def _barrier(flow: Dataflow, node: fx.Node, reason: str) -> Outputs:
    """Freeze every channel dim the node touches and give its outputs fresh frozen symbols."""
    touched = False
    for a in tensor_args(node):
        dims = flow.env.get(a)
        groups = dims if isinstance(dims, tuple) else (dims,)
        for ds in groups:
            for d in ds or ():
                if flow.solver.live_symbols(d):
                    touched = True
                flow.solver.freeze(d, "barrier", f"%{node.name} ({node.target}): {reason}")
    recorded = _recorded_shapes(node)
    if touched:
        flow.barriers.append(Barrier(node.name, str(node.target), reason))
    if recorded is None:
        return None

    def fresh(shape):
        dims = []
        for i, n in enumerate(shape):
            d = Dim.const(1) if n == 1 else Dim.sym(flow.solver.new_sym(n, f"%{node.name}[{i}]"))
            flow.solver.freeze(d, "barrier", f"%{node.name} ({node.target}): output of a barrier")
            dims.append(d)
        return dims

    if isinstance(node.meta.get("val"), torch.Tensor):
        return fresh(recorded)
    return tuple(fresh(s) if s is not None else None for s in recorded)


def _output(flow: Dataflow, node: fx.Node) -> None:
    for i, a in enumerate(tensor_args(node)):
        dims = flow.env.get(a)
        for j, d in enumerate(dims if isinstance(dims, list) else []):
            flow.solver.freeze(d, "io", f"graph output {i} dim {j}")
