"""The rule registry and the narrow interface rules use to talk to the solver.

A rule is a function ``rule(ctx, node) -> outputs`` registered for one or more aten overloads.
``outputs`` is a list of :class:`~prunepass.dims.Dim` (one per output dimension) for a tensor
result, a tuple of such lists for a tuple result, or ``None`` for a non-tensor result.  A rule
that meets arguments it does not understand raises :class:`Unsupported` with a reason; the pass
then turns the node into a barrier.  Rules never guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from prunepass.dims import Dim, Sym
from prunepass.errors import RuleRegistrationError
from prunepass.solver import Solver

TensorDims = list[Dim]
Outputs = TensorDims | tuple[TensorDims | None, ...] | None
Rule = Callable[["RuleContext", fx.Node], Outputs]

#: node.meta key of the expressions a rule saved for the rewrite
NOTES_KEY = "prunepass.notes"


class Unsupported(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a rule for arguments it does not handle; the node becomes a barrier."""


class Registry:
    """Rules keyed by aten overload objects.  Registering an overload twice is an error."""

    def __init__(self) -> None:
        self._rules: dict[Any, Rule] = {}

    def register(self, *ops: Any) -> Callable[[Rule], Rule]:
        """Decorator: ``@registry.register(aten.relu.default, aten.gelu.default)``."""

        def deco(fn: Rule) -> Rule:
            for op in ops:
                self.add(op, fn)
            return fn

        return deco

    def add(self, op: Any, fn: Rule) -> None:
        if not isinstance(op, torch._ops.OpOverload) and not callable(op):
            raise RuleRegistrationError(f"rules are keyed by aten overloads, got {op!r}")
        if op in self._rules:
            raise RuleRegistrationError(
                f"a rule for {op} is already registered ({self._rules[op].__name__}); "
                "use Registry.replace() to override it deliberately"
            )
        self._rules[op] = fn

    def replace(self, op: Any, fn: Rule) -> None:
        """Override an existing rule (for users who know better than the default)."""
        self._rules[op] = fn

    def get(self, op: Any) -> Rule | None:
        return self._rules.get(op)

    def __contains__(self, op: Any) -> bool:
        return op in self._rules

    def __len__(self) -> int:
        return len(self._rules)

    def ops(self) -> list[Any]:
        return sorted(self._rules, key=str)

    def copy(self) -> Registry:
        new = Registry()
        new._rules = dict(self._rules)
        return new


@dataclass
class MemberRole:
    """How a parameter axis relates to its channel symbol (for importance and exactness)."""

    role: str  # "in" (consumes channels), "out" (produces), "inout" (depthwise), "affine"


@dataclass
class RuleContext:
    """What a rule may see and do while it handles one node."""

    solver: Solver
    env: dict[fx.Node, Outputs]
    node: fx.Node
    roles: dict[tuple[str, int], str] = field(default_factory=dict)
    placeholder_kinds: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- reading
    @property
    def where(self) -> str:
        return f"%{self.node.name} ({self.node.target})"

    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        if i < len(self.node.args):
            return self.node.args[i]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

    def dims(self, x: Any) -> TensorDims | None:
        """Channel expressions of a tensor argument (None for non-tensors)."""
        if not isinstance(x, fx.Node):
            return None
        v = self.env.get(x)
        if v is None or isinstance(v, tuple):
            return None
        return list(v)

    def shape(self, x: Any) -> tuple[int, ...] | None:
        if not isinstance(x, fx.Node):
            return None
        val = x.meta.get("val")
        if isinstance(val, torch.Tensor):
            return tuple(int(s) for s in val.shape)
        return None

    def out_shape(self) -> tuple[int, ...]:
        s = self.shape(self.node)
        if s is None:
            raise Unsupported("output is not a single tensor")
        return s

    def need(self, x: Any, what: str) -> TensorDims:
        d = self.dims(x)
        if d is None:
            raise Unsupported(f"{what} is not a tensor with known dimensions")
        return d

    # ---------------------------------------------------------------- writing
    def const(self, n: int) -> Dim:
        return Dim.const(int(n))

    def fresh(self, size: int, label: str) -> Dim:
        if size == 1:
            return Dim.const(1)
        return Dim.sym(self.solver.new_sym(int(size), f"%{self.node.name}.{label}"))

    def fresh_sym(self, size: int, label: str) -> Sym:
        return self.solver.new_sym(int(size), f"%{self.node.name}.{label}")

    def unify(self, a: Dim, b: Dim, why: str = "") -> bool:
        return self.solver.unify(a, b, f"{self.where}: {why}" if why else self.where)

    def fix(self, d: Dim, why: str) -> None:
        """``d`` is not a channel dimension (kernel, spatial, vocabulary...)."""
        self.solver.freeze(d, "shape", f"{self.where}: {why}")

    def barrier(self, d: Dim, why: str) -> None:
        self.solver.freeze(d, "barrier", f"{self.where}: {why}")

    def approx(self, d: Dim, why: str) -> None:
        self.solver.mark_approx(d, f"{self.where}: {why}")

    def tag(self, d: Dim, tag: str) -> None:
        self.solver.tag(d, tag)

    def role(self, x: Any, axis: int, role: str) -> None:
        """Record how a parameter/buffer axis uses its channels."""
        if isinstance(x, fx.Node) and x.op == "placeholder" and self.placeholder_kinds.get(x.name) in (
            "parameter",
            "buffer",
        ):
            self.roles.setdefault((x.name, axis), role)

    def size(self, d: Dim) -> int:
        return self.solver.size(d)

    def note(self, key: str, d: Dim) -> None:
        """Remember a channel expression the rewrite needs to recompute an argument
        (slice offsets, depthwise ``groups``)."""
        self.node.meta.setdefault(NOTES_KEY, {})[key] = d


def tensor_args(node: fx.Node) -> Iterable[fx.Node]:
    """Every tensor-valued node among a node's (possibly nested) arguments."""
    out: list[fx.Node] = []

    def visit(a: Any) -> None:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)

    visit(node.args)
    visit(node.kwargs)
    return out


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d
