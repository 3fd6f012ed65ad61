"""Apply a plan: slice parameters and buffers of the eager module and fix module attributes;
or rewrite the exported program (always possible: every shape constant is an expression).

The eager rewrite is verified against the pruned program on the example inputs; when user code
hard-codes sizes (``x.view(B, 12, 64)``), the error names the line and points to the program.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from prunepass.analysis import Analysis
from prunepass.dims import Dim, Sym
from prunepass.errors import RewriteError
from prunepass.plan import Plan
from prunepass.program import _SHAPE_AS_ARG1, _SPLITS, Resizer, _rewrite_node
from prunepass.propagate import META_KEY

log = logging.getLogger(__name__)

Fixer = Callable[[nn.Module], None]


# ---------------------------------------------------------------------- attribute fixers
def _fix_conv(m: nn.Module) -> None:
    w = m.weight
    old_groups, old_in, old_out = m.groups, m.in_channels, m.out_channels
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    depthwise = old_groups > 1 and old_groups == old_in
    if transposed:
        m.in_channels = w.shape[0]
        if depthwise:
            m.groups = m.in_channels
        m.out_channels = w.shape[1] * m.groups
    else:
        m.out_channels = w.shape[0]
        if depthwise:
            m.groups = m.out_channels * old_groups // old_out
        m.in_channels = w.shape[1] * m.groups


def _fix_linear(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


def _fix_bn(m: nn.Module) -> None:
    ref = m.weight if m.weight is not None else m.running_mean
    if ref is not None:
        m.num_features = ref.shape[0]


def _fix_layer_norm(m: nn.Module) -> None:
    if getattr(m, "weight", None) is not None:
        m.normalized_shape = tuple(m.weight.shape)


def _fix_group_norm(m: nn.Module) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


def _fix_embedding(m: nn.Module) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


def _fix_prelu(m: nn.Module) -> None:
    m.num_parameters = m.weight.shape[0]


ATTRIBUTE_FIXERS: dict[type, Fixer] = {
    nn.modules.conv._ConvNd: _fix_conv,
    nn.Linear: _fix_linear,
    nn.modules.batchnorm._NormBase: _fix_bn,
    nn.LayerNorm: _fix_layer_norm,
    nn.RMSNorm: _fix_layer_norm,
    nn.GroupNorm: _fix_group_norm,
    nn.Embedding: _fix_embedding,
    nn.PReLU: _fix_prelu,
}

HEAD_ATTRS = ("n_heads", "num_heads", "num_attention_heads", "n_head")
HEAD_DIM_ATTRS = ("head_dim", "head_size", "attention_head_size", "d_head")
KV_HEAD_ATTRS = ("n_kv_heads", "num_key_value_heads", "num_kv_heads", "n_kv_head")


def register_fixer(module_type: type, fixer: Fixer) -> None:
    """Teach the eager rewrite how to update the attributes of a custom module type."""
    ATTRIBUTE_FIXERS[module_type] = fixer


def _fixer_for(m: nn.Module) -> Fixer | None:
    for cls in type(m).__mro__:
        if cls in ATTRIBUTE_FIXERS:
            return ATTRIBUTE_FIXERS[cls]
    return None


# ---------------------------------------------------------------------- eager rewrite
def _touched(analysis: Analysis, plan: Plan) -> dict[str, dict[int, list[int]]]:
    """fqn -> axis -> kept indices, for every member of a group the plan changes."""
    out: dict[str, dict[int, list[int]]] = {}
    keep = {n: list(k) for n, k in plan.keep.items()}
    for name in plan.keep:
        for m in analysis.group(name).members:
            axes = out.setdefault(m.fqn, {})
            if m.axis not in axes:
                axes[m.axis] = analysis.kept_indices(m.fqn, m.axis, keep)
    return out


def _slice(t: torch.Tensor, axes: dict[int, list[int]]) -> torch.Tensor:
    out = t.detach()
    for axis, idx in sorted(axes.items()):
        if len(idx) != out.shape[axis]:
            out = out.index_select(axis, torch.tensor(idx, dtype=torch.long, device=out.device))
    return out.clone()


def apply_plan(model: nn.Module, analysis: Analysis, plan: Plan, *, inplace: bool = False,
               verify: bool = True) -> nn.Module:
    """Prune ``model`` by ``plan``.  ``inplace=False`` leaves the given model untouched.

    ``verify`` runs the pruned module against the pruned program and raises ``RewriteError`` on
    a mismatch.  With ``inplace=True`` the check runs on a copy first, so a failure leaves the
    given model as it was (at the cost of a temporary copy; ``verify=False`` skips both)."""
    plan.validate(analysis)
    if inplace and verify:
        apply_plan(model, analysis, plan, inplace=False, verify=True)
        return apply_plan(model, analysis, plan, inplace=True, verify=False)
    target = model if inplace else copy.deepcopy(model)
    touched = _touched(analysis, plan)
    named = dict(target.named_parameters(remove_duplicate=False)) | dict(target.named_buffers(remove_duplicate=False))
    replaced: dict[int, torch.Tensor] = {}
    for fqn, axes in touched.items():
        if fqn not in named:
            raise RewriteError(f"{fqn} is in the analysis but not in the model: was the plan made for this model?")
        old = named[fqn]
        new = _slice(old, axes)
        replaced[id(old)] = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
    modules_changed: list[nn.Module] = []
    for mod in target.modules():
        changed = False
        for table in (mod._parameters, mod._buffers):
            for key, val in table.items():
                if val is not None and id(val) in replaced:
                    table[key] = replaced[id(val)]
                    changed = True
        if changed:
            modules_changed.append(mod)
    for mod in modules_changed:
        fixer = _fixer_for(mod)
        if fixer is not None:
            fixer(mod)
    _fix_attention_attrs(target, analysis, plan)
    if verify:
        verify_eager(target, analysis, plan)
    return target


def _fix_attention_attrs(model: nn.Module, analysis: Analysis, plan: Plan) -> None:
    """Update head counts / head sizes of modules that call scaled_dot_product_attention."""
    rs = Resizer(analysis.flow, analysis.keep_map({n: list(k) for n, k in plan.keep.items()}))
    prefix = analysis.captured.module_prefix
    for node in analysis.flow.graph.nodes:
        if node.target is not torch.ops.aten.scaled_dot_product_attention.default:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            continue
        path = list(stack.values())[-1][0]
        path = path[len(prefix):] if prefix and path.startswith(prefix) else path
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        q, k = analysis.flow.env[node.args[0]], analysis.flow.env[node.args[1]]
        heads, hd, kv = rs.size(q[-3]), rs.size(q[-1]), rs.size(_without_repeats(analysis, k[-3]))
        _set_first(mod, HEAD_ATTRS, heads)
        _set_first(mod, HEAD_DIM_ATTRS, hd)
        _set_first(mod, KV_HEAD_ATTRS, kv)
        for name in ("n_rep", "num_key_value_groups"):
            if isinstance(getattr(mod, name, None), int) and kv:
                setattr(mod, name, heads // kv)
        for name in ("all_head_size", "inner_dim"):
            if isinstance(getattr(mod, name, None), int):
                setattr(mod, name, heads * hd)


def _without_repeats(analysis: Analysis, d: Any) -> Any:
    """Key heads before grouped-query expansion: drop factors made by expand (tag 'repeat')."""
    nd = analysis.flow.solver.norm(d)
    if len(nd.segs) != 1:
        return nd
    tags = analysis.flow.solver.tags
    kept = [f for f in nd.segs[0] if not (isinstance(f, Sym) and "repeat" in tags.get(f, ()))]
    return Dim.prod(kept)


def _set_first(mod: nn.Module, names: tuple[str, ...], value: int) -> None:
    for name in names:
        if isinstance(getattr(mod, name, None), int):
            setattr(mod, name, value)


def changed_shape_nodes(analysis: Analysis, plan: Plan) -> list[tuple[fx.Node, Any, Any]]:
    """Shape-carrying nodes (view/reshape/expand/split) whose literal sizes the plan changes."""
    rs = Resizer(analysis.flow, analysis.keep_map({n: list(k) for n, k in plan.keep.items()}))
    out = []
    for node in analysis.flow.graph.nodes:
        dims = node.meta.get(META_KEY)
        if node.target in _SHAPE_AS_ARG1 and isinstance(dims, list):
            new = rs.shape(dims)
            if list(node.args[1]) != new and [int(s) for s in node.meta["val"].shape] != new:
                out.append((node, list(node.args[1]), new))
        elif node.target in _SPLITS and isinstance(dims, tuple):
            out.append((node, node.args[1], None))
    return out


def verify_eager(pruned: nn.Module, analysis: Analysis, plan: Plan, atol: float = 1e-4, rtol: float = 1e-3) -> None:
    """The pruned eager module must compute what the pruned program computes."""
    prog = prune_program(analysis, plan, export=False)
    args, kwargs = analysis.captured.args, analysis.captured.kwargs
    entry = _entry(pruned, analysis.captured.entry_point)
    with torch.no_grad():
        expected = prog(*args, **kwargs)
        try:
            got = entry(*args, **kwargs)
            ok, why = _same(got, expected, atol, rtol)
        except Exception as exc:  # noqa: BLE001 - any failure is reported with its likely cause
            ok, why = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not ok:
        raise RewriteError(_hardcoded_message(analysis, plan, why))


def _entry(model: nn.Module, entry_point: str) -> Callable:
    sub, _, method = entry_point.rpartition(".")
    owner = model.get_submodule(sub) if sub else model
    return getattr(owner, method)


def _same(a: Any, b: Any, atol: float, rtol: float) -> tuple[bool, str]:
    fa, _ = torch.utils._pytree.tree_flatten(a)
    fb, _ = torch.utils._pytree.tree_flatten(b)
    if len(fa) != len(fb):
        return False, "different number of outputs"
    for x, y in zip(fa, fb, strict=True):
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape:
                return False, f"output shape {tuple(x.shape)} but the pruned program gives {tuple(y.shape)}"
            if not torch.allclose(x, y, atol=atol, rtol=rtol):
                return False, f"outputs differ by up to {float((x - y).abs().max()):.3g}"
    return True, ""


def _hardcoded_message(analysis: Analysis, plan: Plan, why: str) -> str:
    lines = [f"the pruned eager module does not run like the pruned program ({why})."]
    suspects = changed_shape_nodes(analysis, plan)
    if suspects:
        lines.append("These shape operations change size under the plan; if the code writes the sizes as "
                     "literals or reads them from attributes prunepass does not know, it cannot be fixed "
                     "automatically:")
        for node, old, new in suspects[:8]:
            trace = (node.meta.get("stack_trace") or "").strip().splitlines()
            where = " ".join(s.strip() for s in trace[-2:]) if trace else "(no source line recorded)"
            stack = node.meta.get("nn_module_stack") or {}
            module = list(stack.values())[-1][0] if stack else ""
            change = f"{old} -> {new}" if new is not None else f"split sizes {old} change"
            lines.append(f"  %{node.name} ({node.target}) in module '{module}': {change}; at {where}")
    lines.append("Use prunepass.rewrite.prune_program(analysis, plan), which always works, or derive the "
                 "sizes from x.shape / module attributes (register_fixer for custom modules).")
    return "\n".join(lines)


# ---------------------------------------------------------------------- program rewrite
def prune_program(analysis: Analysis, plan: Plan, *, model: nn.Module | None = None, export: bool = True) -> Any:
    """The exported program with parameters sliced and every shape constant recomputed.

    Returns a ``torch.export.ExportedProgram`` (``export=True``) or the runnable unlifted
    ``GraphModule`` (``export=False``), with parameters at their original FQNs.  Weights come
    from the captured program, or from ``model`` (same architecture) when given.
    """
    plan.validate(analysis)
    gm = analysis.program.module()
    prefix = analysis.captured.module_prefix
    if model is not None:
        _load_weights(gm, model, prefix)
    rs = Resizer(analysis.flow, analysis.keep_map({n: list(k) for n, k in plan.keep.items()}))
    old_by_name = {n.name: n for n in analysis.flow.graph.nodes}
    for node in gm.graph.nodes:
        old = old_by_name.get(node.name)
        if node.op == "call_function" and old is not None and old.op == "call_function":
            _rewrite_node(old, node, rs)
    gm.recompile()
    for fqn, axes in _touched(analysis, plan).items():
        owner_path, _, attr = (prefix + fqn).rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        old = getattr(owner, attr)
        new = _slice(old, axes)
        if isinstance(old, nn.Parameter):
            owner._parameters[attr] = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            owner._buffers[attr] = new
    if not export:
        return gm
    return torch.export.export(gm, analysis.captured.args, analysis.captured.kwargs, strict=False)


def _load_weights(gm: nn.Module, model: nn.Module, prefix: str = "") -> None:
    """Point ``gm``'s parameters and buffers at copies of ``model``'s (by FQN)."""
    src = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    src = {prefix + k: v for k, v in src.items()}
    for table_owner in gm.modules():
        prefix = next((n for n, m in gm.named_modules() if m is table_owner), "")
        for table in (table_owner._parameters, table_owner._buffers):
            for key, val in list(table.items()):
                fqn = f"{prefix}.{key}" if prefix else key
                if val is None or fqn not in src:
                    continue
                new = src[fqn].detach().clone()
                table[key] = nn.Parameter(new, requires_grad=val.requires_grad) if isinstance(val, nn.Parameter) else new
