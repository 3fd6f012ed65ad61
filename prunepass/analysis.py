"""Groups from the dataflow: connected channel symbols with verdicts, members and labels; the
deterministic IR dump and its JSON form."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

import torch
from torch import fx, nn

from prunepass.capture import Captured, capture
from prunepass.dims import Dim, Sym, kept_indices, new_size, render
from prunepass.ir import BarrierFact, Group, Member
from prunepass.propagate import Dataflow, propagate
from prunepass.rules import Registry, default_registry

log = logging.getLogger(__name__)


class Analysis:
    """Everything prunepass knows about one captured model.  Read-only after construction."""

    def __init__(self, flow: Dataflow, seconds: float, max_prunable_labels: int | None = None) -> None:
        self.flow = flow
        self.captured: Captured = flow.captured
        self.seconds = seconds
        self._max_labels = max_prunable_labels
        self._names: dict[Sym, str] = {}
        self.groups: tuple[Group, ...] = ()
        self._group_sym: dict[str, Sym] = {}
        self._param_axes: dict[tuple[str, int], Dim] = {}
        self.fixed_symbols: int = 0
        self._build()

    # ---------------------------------------------------------------- construction
    def _build(self) -> None:
        solver = self.flow.solver
        members: dict[Sym, list[Member]] = {}
        for node in self.flow.graph.nodes:
            if node.op != "placeholder":
                continue
            gi = self.captured.inputs.get(node.name)
            if gi is None or gi.kind not in ("parameter", "buffer") or not node.users:
                continue  # unused by this entry point: never touched
            dims = self.flow.env.get(node) or []
            shape = tuple(int(s) for s in node.meta["val"].shape)
            for axis, d in enumerate(dims):
                nd = solver.norm(d)
                self._param_axes[(gi.target, axis)] = nd
                for s in _syms(nd):
                    members.setdefault(s, []).append(
                        Member(gi.target, gi.kind, axis, self.flow.roles.get((node.name, axis), "other"), "", shape)
                    )
        groups: list[Group] = []
        label = 0
        roots = sorted(members)
        self.fixed_symbols = 0
        for s in roots:
            frozen = solver.frozen.get(s, [])
            if frozen and all(kind == "shape" for kind, _ in frozen):
                self.fixed_symbols += 1
                self._names[s] = f"k{self.fixed_symbols - 1}"
                continue
            size = solver.size_of(s)
            reasons = [r for _, r in frozen]
            if not reasons and all(m.kind == "buffer" for m in members[s]):
                # no weight carries these channels: pruning saves nothing, and such a dim is
                # usually a table cut to the example's size (the rows of position_ids past the
                # traced sequence length), which other input sizes still need
                reasons.append("only buffers carry these channels (no weights: nothing to gain); "
                               f"{', '.join(sorted({m.fqn for m in members[s]}))}")
            if self._max_labels is not None and size > self._max_labels and not reasons:
                reasons.append(f"group has {size} channels, more than max_prunable_labels={self._max_labels}")
            prunable = not reasons and size > 1
            k = len(groups)
            name = f"g{k}" if prunable else f"u{k}"
            self._names[s] = name
            self._group_sym[name] = s
            groups.append(Group(
                index=k, name=name, size=size, prunable=prunable, members=tuple(members[s]),
                reasons=tuple(reasons) if reasons or prunable else ("a single channel",),
                approximate=tuple(solver.approx.get(s, [])), tags=tuple(sorted(solver.tags.get(s, set()))),
                labels=(label, label + size),
            ))
            label += size
        # second pass: members get their layout rendered with the final names
        self.groups = tuple(
            Group(**{**asdict_shallow(g), "members": tuple(
                Member(m.fqn, m.kind, m.axis, m.role, self.render(self._param_axes[(m.fqn, m.axis)]), m.shape)
                for m in g.members)})
            for g in groups
        )

    # ---------------------------------------------------------------- queries
    @property
    def program(self) -> torch.export.ExportedProgram:
        return self.captured.program

    @property
    def model(self) -> nn.Module:
        return self.captured.model

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def unprunable_groups(self) -> list[Group]:
        return [g for g in self.groups if not g.prunable]

    @property
    def barriers(self) -> list[BarrierFact]:
        return [BarrierFact(b.node, b.op, b.reason) for b in self.flow.barriers]

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r}; groups are {[g.name for g in self.groups][:20]}...")

    def group_of_label(self, label: int) -> tuple[Group, int]:
        for g in self.groups:
            if g.labels[0] <= label < g.labels[1]:
                return g, label - g.labels[0]
        raise KeyError(f"label {label} is outside 0..{self.groups[-1].labels[1] - 1 if self.groups else 0}")

    def symbol(self, group: Group | str) -> Sym:
        return self._group_sym[group if isinstance(group, str) else group.name]

    def axis_expr(self, fqn: str, axis: int) -> Dim | None:
        """Normalised channel expression of a parameter/buffer axis."""
        return self._param_axes.get((fqn, axis))

    def sizes(self) -> dict[Sym, int]:
        return {s: self.flow.solver.size_of(s) for s in self._all_syms()}

    def _all_syms(self) -> list[Sym]:
        return [Sym(i) for i in range(len(self.flow.solver.infos))]

    def keep_map(self, keep: dict[str, list[int]]) -> dict[Sym, list[int]]:
        """Group name -> kept channel indices, as a symbol map for the index functions."""
        return {self._group_sym[name]: list(idx) for name, idx in keep.items()}

    def kept_indices(self, fqn: str, axis: int, keep: dict[str, list[int]]) -> list[int]:
        d = self._param_axes[(fqn, axis)]
        return kept_indices(d, _SolverSizes(self), self.keep_map(keep))

    def new_size(self, d: Dim, keep: dict[str, list[int]]) -> int:
        return new_size(self.flow.solver.norm(d), _SolverSizes(self), self.keep_map(keep))

    def render(self, d: Dim) -> str:
        return render(self.flow.solver.norm(d), self._name)

    def _name(self, s: Sym) -> str:
        name = self._names.get(s)
        if name is not None:
            return name
        return f"s{s.id}" + ("!" if s in self.flow.solver.frozen else "")

    def node_dims(self, node: fx.Node) -> list[str] | tuple | None:
        v = self.flow.env.get(node)
        if v is None:
            return None
        if isinstance(v, tuple):
            return tuple(None if t is None else [self.render(d) for d in t] for t in v)
        return [self.render(d) for d in v]

    # ---------------------------------------------------------------- output
    def dump(self) -> str:
        """Deterministic text dump: nodes with symbolic shapes, then groups and barriers."""
        lines = [f"# prunepass IR: entry_point={self.captured.entry_point} "
                 f"nodes={len(self.flow.graph.nodes)} groups={len(self.groups)} "
                 f"prunable={len(self.prunable_groups)} barriers={len(self.flow.barriers)}"]
        lines.append("# names: g<k> prunable group, u<k> unprunable group, k<n> kernel/spatial/"
                     "vocabulary dims, s<id>! frozen symbol (batch, sequence, ...)")
        for node in self.flow.graph.nodes:
            lines.append(self._node_line(node))
        lines.append("")
        lines.append("groups:")
        for g in self.groups:
            lines.extend(_group_lines(g))
        if self.flow.barriers:
            lines.append("")
            lines.append("barriers:")
            for b in self.flow.barriers:
                lines.append(f"  %{b.node} {b.op}: {b.reason}")
        return "\n".join(lines) + "\n"

    def _node_line(self, node: fx.Node) -> str:
        dims = self.node_dims(node)
        shape = _fmt_dims(dims)
        if node.op == "placeholder":
            gi = self.captured.inputs.get(node.name)
            what = f"{gi.kind} {gi.target}" if gi is not None else "input"
            return f"%{node.name} = {what} : {shape}"
        if node.op == "output":
            return "return (" + ", ".join(f"%{a.name}" for a in _flat_nodes(node.args)) + ")"
        args = ", ".join(_fmt_arg(a) for a in node.args)
        return f"%{node.name} = {_op_name(node.target)}({args}) : {shape}"

    def to_dict(self) -> dict[str, Any]:
        nodes = []
        for node in self.flow.graph.nodes:
            if node.op == "output":
                continue
            nodes.append({"name": node.name, "op": node.op if node.op == "placeholder" else _op_name(node.target),
                          "dims": self.node_dims(node)})
        return {
            "entry_point": self.captured.entry_point,
            "nodes": nodes,
            "groups": [_group_dict(g) for g in self.groups],
            "barriers": [asdict(b) for b in self.barriers],
        }

    def to_json(self, indent: int = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def asdict_shallow(g: Group) -> dict[str, Any]:
    return {f: getattr(g, f) for f in g.__dataclass_fields__}


class _SolverSizes(dict):
    def __init__(self, a: Analysis) -> None:
        super().__init__()
        self._solver = a.flow.solver

    def __getitem__(self, s: Sym) -> int:
        return self._solver.size_of(s)


def _syms(d: Dim) -> list[Sym]:
    from prunepass.dims import symbols

    return symbols(d)


def _flat_nodes(a: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    if isinstance(a, fx.Node):
        out.append(a)
    elif isinstance(a, (list, tuple)):
        for b in a:
            out.extend(_flat_nodes(b))
    return out


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def _fmt_arg(a: Any) -> str:
    if isinstance(a, fx.Node):
        return f"%{a.name}"
    if isinstance(a, (list, tuple)):
        return "[" + ", ".join(_fmt_arg(b) for b in a) + "]"
    if isinstance(a, float):
        return f"{a:g}"
    return repr(a)


def _fmt_dims(dims: Any) -> str:
    if dims is None:
        return "-"
    if isinstance(dims, tuple):
        return "(" + ", ".join(_fmt_dims(d) for d in dims) + ")"
    return "[" + ", ".join(dims) + "]"


def _group_lines(g: Group) -> list[str]:
    head = f"  {g.name} size={g.size} labels={g.label_text()}"
    if g.prunable:
        head += " prunable"
    if g.tags:
        head += " tags=" + ",".join(g.tags)
    if g.approximate:
        head += " approximate"
    lines = [head]
    for m in g.members:
        lines.append(f"    {m.fqn}[{m.axis}] {m.role} = {m.layout}")
    for r in g.reasons:
        lines.append(f"    unprunable: {r}")
    for r in g.approximate[:3]:
        lines.append(f"    approximate: {r}")
    return lines


def _group_dict(g: Group) -> dict[str, Any]:
    return {
        "name": g.name, "size": g.size, "prunable": g.prunable, "labels": list(g.labels),
        "label_text": g.label_text(), "tags": list(g.tags), "granularity": g.granularity,
        "approximate": list(g.approximate), "reasons": list(g.reasons),
        "min_channels": g.min_channels, "step": g.step,
        "members": [{"fqn": m.fqn, "kind": m.kind, "axis": m.axis, "role": m.role, "layout": m.layout}
                    for m in g.members],
    }


def analyze(
    model: nn.Module,
    dummy_input: Any,
    entry_point: str = "forward",
    *,
    registry: Registry | None = None,
    strict: bool = False,
    max_prunable_labels: int | None = None,
    eager_compatible: bool = True,
) -> Analysis:
    """Capture ``model`` and find its prunable channel groups.

    ``eager_compatible`` adds the size ties that ordinary eager code assumes: one ``head_dim``
    for queries, keys and values, and equal pieces for ``chunk`` / ``split(x, size)``.  Set it
    False to prune those independently; the pruned exported program supports that, a typical
    eager module does not."""
    captured = capture(model, dummy_input, entry_point, strict=strict)
    return analyze_captured(captured, registry=registry, max_prunable_labels=max_prunable_labels,
                            eager_compatible=eager_compatible)


def analyze_captured(
    captured: Captured, *, registry: Registry | None = None, max_prunable_labels: int | None = None,
    eager_compatible: bool = True,
) -> Analysis:
    t0 = time.perf_counter()
    flow = propagate(captured, registry if registry is not None else default_registry(),
                     {"eager_compatible": eager_compatible})
    analysis = Analysis(flow, 0.0, max_prunable_labels)
    analysis.seconds = time.perf_counter() - t0  # dataflow + groups
    return analysis
