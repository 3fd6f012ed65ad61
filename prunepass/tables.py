"""Inspection tables in the style of the reference product: module dependencies, unprunable
groups, label dependencies and label filters.  Every function returns a string (or data)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunepass.analysis import Analysis
from prunepass.ir import Group


def grid(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """A plain grid table (``+---+`` borders), like ``tabulate(..., tablefmt="grid")``."""
    all_rows = [list(map(str, header))] if header else []
    all_rows += [list(map(str, r)) for r in rows]
    if not all_rows:
        return ""
    ncol = max(len(r) for r in all_rows)
    for r in all_rows:
        r += [""] * (ncol - len(r))
    widths = [max(len(r[i]) for r in all_rows) for i in range(ncol)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head_sep = "+" + "+".join("=" * (w + 2) for w in widths) + "+"
    out = [sep]
    for k, r in enumerate(all_rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        out.append(head_sep if header and k == 0 else sep)
    return "\n".join(out)


def _module_repr(model: nn.Module | None, name: str) -> str:
    if model is None:
        return ""
    try:
        return repr(model.get_submodule(name)).split("\n")[0] if name else type(model).__name__
    except AttributeError:
        return ""


def _owners(group: Group, roles: set[str]) -> list[str]:
    seen: dict[str, None] = {}
    for m in group.members:
        if m.role in roles:
            seen.setdefault(m.fqn.rpartition(".")[0], None)
    return list(seen)


def _group_block(a: Analysis, g: Group, title: str, model: nn.Module | None, show_parameter_nodes: bool) -> str:
    lines = [f"{title} {g.index} with labels {g.label_text()}"]
    producers = _owners(g, {"out", "inout", "affine", "other"})
    rows = [[m, _module_repr(model, m)] for m in producers]
    if show_parameter_nodes:
        rows += [[f"{m.fqn}[{m.axis}]", f"{m.role} {m.layout}"] for m in g.members]
    if rows:
        lines.append(grid(rows))
    for r in g.reasons if not g.prunable else ():
        lines.append(f"reason: {r}")
    users = _owners(g, {"in"})
    if users:
        lines.append(f"{title} {g.index} users:")
        lines.append(grid([[u, _module_repr(model, u)] for u in users]))
    return "\n".join(lines)


def tabulate_module_dependencies(module_name: str, pruning_info: Analysis, model: nn.Module | None = None,
                                 show_op_with_weights_only: bool = True, show_parameter_nodes: bool = False,
                                 show_all_nodes: bool = False) -> str:
    """Groups touching the parameters of ``module_name``, its nodes and per-dim labels."""
    a = pruning_info
    prefix = module_name + "."
    groups = [g for g in a.groups if any(m.fqn.startswith(prefix) for m in g.members)]
    if not groups:
        known = sorted({m.fqn.rpartition(".")[0] for g in a.groups for m in g.members})
        raise KeyError(f"module {module_name!r} owns no channel group; modules with groups: {known[:15]}...")
    placeholders = {n for n, gi in a.captured.inputs.items() if gi.target and gi.target.startswith(prefix)}
    nodes = [n for n in a.flow.graph.nodes if n.op == "call_function"
             and any(getattr(x, "name", None) in placeholders for x in n.args)]
    labels = []
    for node in nodes:
        dims = a.node_dims(node)
        labels.append(str([d if any(d == g.name or g.name in d.split("*") for g in groups) else None
                           for d in dims] if isinstance(dims, list) else dims))
    head = [
        ["module name", module_name],
        ["node name", ", ".join(n.name for n in nodes)],
        ["node operation", ", ".join(sorted({str(n.target) for n in nodes}))],
        ["prunable groups", sum(g.prunable for g in groups)],
        ["unprunable groups", sum(not g.prunable for g in groups)],
        ["node labels", "; ".join(labels)],
    ]
    parts = [grid(head)]
    for g in groups:
        parts.append(_group_block(a, g, "Prunable group" if g.prunable else "Unprunable group", model,
                                  show_parameter_nodes or show_all_nodes))
    del show_op_with_weights_only
    return "\n".join(parts)


def tabulate_unprunable_groups(pruning_info: Analysis, model: nn.Module | None = None,
                               show_op_with_weights_only: bool = True, show_parameter_nodes: bool = False,
                               show_all_nodes: bool = False) -> str:
    """Every unprunable group with its members, users and the reasons it cannot be pruned."""
    a = pruning_info
    parts = ["Unprunable groups:"]
    for g in a.unprunable_groups:
        parts.append(_group_block(a, g, "Unprunable group", model, True))
    if a.barriers:
        parts.append("Barriers:")
        parts.append(grid([[b.node, b.op, b.reason] for b in a.barriers], header=["node", "op", "reason"]))
    del show_op_with_weights_only, show_parameter_nodes, show_all_nodes
    return "\n".join(parts)


def _label(label: object) -> int:
    return int(getattr(label, "label", label))


def tabulate_label_dependencies(label: int, pruning_info: Analysis, model: nn.Module | None = None,
                                show_op_with_weights_only: bool = True, show_parameter_nodes: bool = False,
                                show_all_nodes: bool = False) -> str:
    """Parameters and modules that one channel label touches."""
    a = pruning_info
    g, i = a.group_of_label(_label(label))
    rows = []
    for m in g.members:
        module = m.fqn.rpartition(".")[0]
        rows.append([m.fqn, f"{m.role} axis {m.axis}", _module_repr(model, module)])
    text = f"label: {_label(label)} (channel {i} of group {g.name}, {'prunable' if g.prunable else 'unprunable'})"
    del show_op_with_weights_only, show_parameter_nodes, show_all_nodes
    return text + "\n" + grid(rows)


@dataclass(frozen=True)
class LabelFilterInfo:
    """One tensor slice that belongs to a channel label."""

    tensor_name: str
    shape: tuple[int, ...]
    mapping: list[list[tuple[int, int]] | None]
    tensor: torch.Tensor | None = None


def get_label_filters(label: int, pruning_info: Analysis, model: nn.Module, *,
                      with_tensors: bool = False) -> list[LabelFilterInfo]:
    """Slices of every parameter/buffer that channel ``label`` owns (rows at each axis)."""
    a = pruning_info
    g, i = a.group_of_label(_label(label))
    keep = {g.name: [i]}
    state = dict(model.named_parameters()) | dict(model.named_buffers()) if model is not None else {}
    by_fqn: dict[str, dict[int, list[int]]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for m in g.members:
        by_fqn.setdefault(m.fqn, {})[m.axis] = a.kept_indices(m.fqn, m.axis, keep)
        shapes[m.fqn] = m.shape
    out = []
    for fqn, axes in by_fqn.items():
        shape = list(shapes[fqn])
        mapping: list[list[tuple[int, int]] | None] = [None] * len(shape)
        for axis, rows in axes.items():
            shape[axis] = len(rows)
            mapping[axis] = [(_label(label), r) for r in rows]
        tensor = None
        if with_tensors and fqn in state:
            tensor = state[fqn]
            for axis, rows in axes.items():
                tensor = tensor.index_select(axis, torch.tensor(rows))
            tensor = tensor.detach().clone()
        out.append(LabelFilterInfo(fqn, tuple(shape), mapping, tensor))
    return out


def tabulate_label_filters(label: int, pruning_info: Analysis, model: nn.Module) -> str:
    """Table of tensor name, sliced shape and index mapping for one channel label."""
    filters = get_label_filters(label, pruning_info, model)
    rows = [[f.tensor_name, f.shape, f.mapping] for f in filters]
    return f"label: {_label(label)}\n" + grid(rows, header=["tensor name", "shape", "mapping"])
