"""Apply kept channel indices to the exported program: slice parameters and recompute every
shape constant (view / reshape / expand / split sizes, slice offsets, normalized_shape,
depthwise ``groups``) from the symbolic expressions.  This always works, even where the eager
code has hard-coded sizes, because every size in the graph is known as an expression."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from prunepass.dims import Dim, Sym, kept_indices, new_size
from prunepass.propagate import META_KEY, Dataflow
from prunepass.rules._ops import overloads
from prunepass.rules.base import NOTES_KEY

_SHAPE_AS_ARG1 = set(overloads("view.default", "reshape.default", "_unsafe_view.default", "view_copy.default",
                               "expand.default", "expand_copy.default"))
_SPLITS = set(overloads("split.Tensor", "split_with_sizes.default", "chunk.default", "tensor_split.sections",
                        "tensor_split.indices", "split_copy.Tensor", "split_with_sizes_copy.default",
                        "unsafe_split.Tensor"))
_NORMS = set(overloads("layer_norm.default", "native_layer_norm.default", "rms_norm.default"))
_UNFLATTEN = set(overloads("unflatten.int"))
_SLICE = set(overloads("slice.Tensor", "slice_copy.Tensor"))
_NARROW = set(overloads("narrow.default"))
_CONV_GROUPS = {op: 6 for op in overloads("conv1d.default", "conv2d.default", "conv3d.default", "conv1d.padding",
                                          "conv2d.padding", "conv3d.padding", "conv_transpose1d.default",
                                          "conv_transpose2d.input", "conv_transpose3d.input")}
_CONV_GROUPS.update({op: 8 for op in overloads("convolution.default")})
_SPLIT_WITH_SIZES = torch.ops.aten.split_with_sizes.default


class Resizer:
    """New sizes and kept indices of channel expressions under a keep map (Sym -> indices)."""

    def __init__(self, flow: Dataflow, keep: dict[Sym, list[int]]) -> None:
        self.flow = flow
        self.keep = keep
        self._sizes = _Sizes(flow)

    def size(self, d: Dim) -> int:
        return new_size(self.flow.solver.norm(d), self._sizes, self.keep)

    def indices(self, d: Dim) -> list[int]:
        return kept_indices(self.flow.solver.norm(d), self._sizes, self.keep)

    def shape(self, dims: list[Dim]) -> list[int]:
        return [self.size(d) for d in dims]


class _Sizes(dict):
    def __init__(self, flow: Dataflow) -> None:
        super().__init__()
        self._solver = flow.solver

    def __getitem__(self, s: Sym) -> int:
        return self._solver.size_of(s)


def slice_tensor(t: torch.Tensor, dims: list[Dim], rs: Resizer) -> torch.Tensor:
    """Keep, along every axis, the indices the expressions say survive."""
    out = t
    for axis, d in enumerate(dims):
        if rs.size(d) == t.shape[axis]:
            continue
        idx = torch.tensor(rs.indices(d), dtype=torch.long, device=t.device)
        out = out.index_select(axis, idx)
    return out


def rewrite_graph(flow: Dataflow, keep: dict[Sym, list[int]]) -> fx.GraphModule:
    """A copy of the lifted exported graph whose shape constants follow ``keep``."""
    src = flow.captured.program.graph_module
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(src.graph, val_map)
    graph.output(out)
    rs = Resizer(flow, keep)
    for old, new in val_map.items():
        if old.op == "call_function":
            _rewrite_node(old, new, rs)
    gm = fx.GraphModule(src, graph)
    gm.recompile()
    return gm


def _rewrite_node(old: fx.Node, new: fx.Node, rs: Resizer) -> None:
    dims = old.meta.get(META_KEY)
    notes = old.meta.get(NOTES_KEY, {})
    op = old.target
    args = list(new.args)
    if op in _SHAPE_AS_ARG1 and isinstance(dims, list):
        args[1] = rs.shape(dims)
    elif op in _UNFLATTEN and isinstance(dims, list):
        d = int(args[1]) % len(rs.flow.env[old.args[0]])
        args[2] = rs.shape(dims)[d:d + len(args[2])]
    elif op in _SPLITS and isinstance(dims, tuple):
        x_dims = rs.flow.env[old.args[0]]
        axis = int(old.args[2] if len(old.args) > 2 else old.kwargs.get("dim", 0)) % len(x_dims)
        sizes = [rs.size(piece[axis]) for piece in dims]
        new.target = _SPLIT_WITH_SIZES
        new.args, new.kwargs = (args[0], sizes, axis), {}
        return
    elif op in _NORMS and isinstance(dims, (list, tuple)):
        x_dims = rs.flow.env[old.args[0]]
        k = len(args[1])
        args[1] = rs.shape(x_dims[len(x_dims) - k:])
    elif op in _SLICE and "start" in notes:
        start = rs.size(notes["start"])
        args = args + [None] * (5 - len(args))
        args[2], args[3] = start, start + rs.size(notes["length"])
        args[4] = args[4] if args[4] is not None else 1
    elif op in _NARROW and "start" in notes:
        args[2], args[3] = rs.size(notes["start"]), rs.size(notes["length"])
    elif op in _CONV_GROUPS and "groups" in notes:
        i = _CONV_GROUPS[op]
        args = args + [_conv_default(op, j) for j in range(len(args), i + 1)]
        args[i] = rs.size(notes["groups"])
    new.args = tuple(args)


def _conv_default(op: Any, index: int) -> Any:
    """Defaults of the optional conv arguments (stride, padding, dilation / output_padding)."""
    schema = op._schema.arguments[index]
    return schema.default_value


def flat_inputs(flow: Dataflow, state: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> list[Any]:
    """Placeholder values in graph order for calling the lifted graph module."""
    ep = flow.captured.program
    user = _flat_user_args(ep, args, kwargs)
    out: list[Any] = []
    ui = 0
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name in ("PARAMETER", "BUFFER"):
            fqn = flow.captured.inputs[spec.arg.name].target
            out.append(state[fqn])
        elif spec.kind.name == "CONSTANT_TENSOR":
            out.append(ep.constants[spec.target])
        elif spec.kind.name == "USER_INPUT":
            out.append(user[ui])
            ui += 1
        else:
            out.append(None)
    return out


def _flat_user_args(ep: torch.export.ExportedProgram, args: tuple, kwargs: dict) -> list[Any]:
    """User inputs flattened in the exported order (kwargs reordered by the input spec),
    without the exported shape checks (pruned inputs have new sizes)."""
    from torch.export._tree_utils import reorder_kwargs

    in_spec = ep.call_spec.in_spec
    if in_spec is not None and kwargs:
        kwargs = reorder_kwargs(kwargs, in_spec)
    flat, _ = torch.utils._pytree.tree_flatten((args, kwargs))
    return flat
