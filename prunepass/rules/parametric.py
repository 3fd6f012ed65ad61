"""Ops with parameters that create or consume channels: convolutions, linear layers and
matrix products, normalisations and embeddings."""

from __future__ import annotations

from torch import fx

from prunepass.dims import Dim
from prunepass.rules._ops import overloads
from prunepass.rules.base import Registry, RuleContext, TensorDims, Unsupported, norm_dim
from prunepass.rules.pointwise import broadcast

CONV = {  # overload spec -> (spatial dims, transposed, index of groups arg)
    "conv1d.default": (1, False, 6), "conv2d.default": (2, False, 6), "conv3d.default": (3, False, 6),
    "conv1d.padding": (1, False, 6), "conv2d.padding": (2, False, 6), "conv3d.padding": (3, False, 6),
    "conv_transpose1d.default": (1, True, 6), "conv_transpose2d.input": (2, True, 6),
    "conv_transpose3d.input": (3, True, 6),
}


def register(reg: Registry) -> None:
    for spec, (k, transposed, gi) in CONV.items():
        reg.register(*overloads(spec))(_conv_rule(k, transposed, gi))
    reg.register(*overloads("convolution.default"))(convolution)
    reg.register(*overloads("linear.default"))(linear)
    reg.register(*overloads("matmul.default", "mm.default", "bmm.default"))(matmul)
    reg.register(*overloads("addmm.default", "baddbmm.default", "addbmm.default"))(addmm)
    reg.register(*overloads("batch_norm.default", "_native_batch_norm_legit_no_training.default",
                            "instance_norm.default", "_native_batch_norm_legit_functional.default",
                            "native_batch_norm.default", "_native_batch_norm_legit.default"))(batch_norm)
    reg.register(*overloads("layer_norm.default", "native_layer_norm.default", "rms_norm.default"))(layer_norm)
    reg.register(*overloads("group_norm.default", "native_group_norm.default"))(group_norm)
    reg.register(*overloads("embedding.default"))(embedding)


def _conv_rule(k: int, transposed: bool, groups_index: int):
    def conv(ctx: RuleContext, node: fx.Node) -> TensorDims:
        groups = ctx.arg(groups_index, "groups", 1)
        return conv_common(ctx, node, k, transposed, int(groups))

    conv.__name__ = f"conv{k}d_transposed" if transposed else f"conv{k}d"
    return conv


def convolution(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """aten.convolution(input, weight, bias, stride, padding, dilation, transposed, out_pad, groups)."""
    w_shape = ctx.shape(node.args[1])
    if w_shape is None:
        raise Unsupported("weight shape unknown")
    return conv_common(ctx, node, len(w_shape) - 2, bool(node.args[6]), int(node.args[8]))


def conv_common(ctx: RuleContext, node: fx.Node, k: int, transposed: bool, groups: int) -> TensorDims:
    """Convolution, plain / grouped / depthwise / transposed.

    weight is [Cout, Cin/g, *K] ([Cin, Cout/g, *K] when transposed).  With g groups the channel
    axes are ``g * c`` products (the same index is pruned in every group, ``groups`` stays); a
    depthwise conv (g == Cin, one input channel per group) keeps channels one-to-one and its
    ``groups`` follows the channel count.
    """
    x_arg, w_arg, b_arg = node.args[0], node.args[1], ctx.arg(2, "bias")
    x, w = ctx.need(x_arg, "input"), ctx.need(w_arg, "weight")
    x_shape, w_shape = ctx.shape(x_arg), ctx.shape(w_arg)
    out_shape = ctx.out_shape()
    cdim = len(x) - k - 1
    if cdim not in (0, 1):
        raise Unsupported(f"input rank {len(x)} does not fit a {k}-d convolution")
    for d in w[2:]:
        ctx.fix(d, "kernel size")
    for d in x[cdim + 1:]:
        ctx.fix(d, "spatial dim")
    cin = x_shape[cdim]
    depthwise = groups > 1 and groups == cin
    if depthwise:
        mult = w_shape[1] if transposed else w_shape[0] // cin
        out = Dim.prod([x[cdim], mult]) if mult > 1 else x[cdim]
        if transposed:
            ctx.unify(w[0], x[cdim], "depthwise transposed weight")
        else:
            ctx.unify(w[0], out, "depthwise weight rows")
        ctx.role(w_arg, 0, "inout")
        ctx.tag(x[cdim], "depthwise")
        ctx.note("groups", x[cdim])
    elif transposed:
        if groups > 1:
            ci = ctx.fresh(w_shape[0] // groups, "in_per_group")
            ctx.unify(w[0], Dim.prod([groups, ci]), "grouped transposed conv input layout")
        ctx.unify(x[cdim], w[0], "transposed conv input channels")
        ctx.role(w_arg, 0, "in")
        ctx.role(w_arg, 1, "out")
        out = Dim.prod([groups, w[1]]) if groups > 1 else w[1]
    else:
        cin_expr = Dim.prod([groups, w[1]]) if groups > 1 else w[1]
        ctx.unify(x[cdim], cin_expr, "conv input channels")
        ctx.role(w_arg, 1, "in")
        ctx.role(w_arg, 0, "out")
        if groups > 1:
            co = ctx.fresh(w_shape[0] // groups, "out_per_group")
            ctx.unify(w[0], Dim.prod([groups, co]), "grouped conv output layout")
        out = w[0]
    if b_arg is not None:
        b = ctx.need(b_arg, "bias")
        ctx.unify(b[0], out, "conv bias")
        ctx.role(b_arg, 0, "out" if not depthwise else "inout")
    lead = x[:cdim]
    spatial = [Dim.const(s) for s in out_shape[cdim + 1:]]
    return lead + [out] + spatial


def linear(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """y = x W^T + b: x[-1] ~ W[1] (consumed), y[-1] = W[0] (produced)."""
    x, w = ctx.need(node.args[0], "input"), ctx.need(node.args[1], "weight")
    if len(w) != 2:
        raise Unsupported("weight is not 2-d")
    ctx.unify(x[-1], w[1], "linear input features")
    ctx.role(node.args[1], 1, "in")
    ctx.role(node.args[1], 0, "out")
    b_arg = ctx.arg(2, "bias")
    if b_arg is not None:
        ctx.unify(ctx.need(b_arg, "bias")[0], w[0], "linear bias")
        ctx.role(b_arg, 0, "out")
    return x[:-1] + [w[0]]


def _batch_dims(ctx: RuleContext, a: TensorDims, sa, b: TensorDims, sb) -> TensorDims:
    return broadcast(ctx, [(a[:-2], tuple(sa[:-2])), (b[:-2], tuple(sb[:-2]))])


def matmul(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """A @ B: contraction A[-1] ~ B[-2], batch dims broadcast, result [..., A[-2], B[-1]]."""
    a_arg, b_arg = node.args[0], node.args[1]
    a, b = ctx.need(a_arg, "lhs"), ctx.need(b_arg, "rhs")
    sa, sb = ctx.shape(a_arg), ctx.shape(b_arg)
    if len(a) < 2 or len(b) < 2:
        if len(b) == 1 and len(a) >= 1:
            ctx.unify(a[-1], b[0], "matrix-vector contraction")
            return a[:-1]
        raise Unsupported("1-d lhs operand")
    ctx.unify(a[-1], b[-2], "matmul contraction")
    return _batch_dims(ctx, a, sa, b, sb) + [a[-2], b[-1]]


def addmm(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """bias + A @ B (addmm / baddbmm): as matmul, then the bias broadcasts onto the result."""
    out = matmul_like(ctx, node.args[1], node.args[2])
    bias = ctx.need(node.args[0], "bias")
    if str(node.target).startswith("aten.addbmm"):
        out = out[1:]
    out = broadcast(ctx, [(out, ctx.out_shape()), (bias, ctx.shape(node.args[0]))])
    return out


def matmul_like(ctx: RuleContext, a_arg, b_arg) -> TensorDims:
    a, b = ctx.need(a_arg, "lhs"), ctx.need(b_arg, "rhs")
    ctx.unify(a[-1], b[-2], "matmul contraction")
    return _batch_dims(ctx, a, ctx.shape(a_arg), b, ctx.shape(b_arg)) + [a[-2], b[-1]]


def batch_norm(ctx: RuleContext, node: fx.Node):
    """Per-channel normalisation over dim 1 (batch/instance norm); weight, bias and running
    stats follow the channel.  Statistics are per channel, so pruning is exact."""
    x = ctx.need(node.args[0], "input")
    c = x[1] if len(x) > 1 else x[0]
    op = str(node.target)
    if op.startswith("aten.instance_norm"):
        for d in x[2:]:
            ctx.approx(d, "instance statistics over spatial dims")
    elif _batch_stats(node):
        for d in [x[0], *x[2:]]:
            ctx.approx(d, "batch statistics over batch and spatial dims")
    for i in range(1, 5):
        a = ctx.arg(i)
        d = ctx.dims(a)
        if d is not None and len(d) == 1:
            ctx.unify(d[0], c, "per-channel norm parameter")
            ctx.role(a, 0, "affine")
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return tuple([x] + [[c] if (hasattr(v, "shape") and len(v.shape) == 1 and v.shape[0] == ctx.size(c))
                            else None for v in val[1:]])
    return x


def _batch_stats(node: fx.Node) -> bool:
    """Does this batch norm normalise with batch statistics (training mode)?"""
    op = str(node.target)
    if op == "aten.batch_norm.default":
        return bool(node.args[5])
    if op in ("aten._native_batch_norm_legit_functional.default", "aten.native_batch_norm.default",
              "aten._native_batch_norm_legit.default"):
        return bool(node.args[5])
    return False


def layer_norm(ctx: RuleContext, node: fx.Node):
    """Normalises over the trailing dims in normalized_shape; the affine params follow them.
    Removing channels changes the mean/variance: groups through here are approximate."""
    x = ctx.need(node.args[0], "input")
    nshape = list(node.args[1])
    k = len(nshape)
    for i, d in enumerate(x[len(x) - k:]):
        ctx.approx(d, "layer/RMS norm normalises over this dim")
        for a in (ctx.arg(2, "weight"), ctx.arg(3, "bias") if "rms_norm" not in str(node.target) else None):
            pd = ctx.dims(a)
            if pd is not None:
                ctx.unify(pd[i], d, "norm affine parameter")
                ctx.role(a, i, "affine")
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return (x, None, None)
    return x


def group_norm(ctx: RuleContext, node: fx.Node):
    """GroupNorm(G): channels are a G x (C/G) layout; pruning keeps G and removes the same
    index in every group (approximate: group statistics change)."""
    x = ctx.need(node.args[0], "input")
    g = int(node.args[1]) if str(node.target) == "aten.group_norm.default" else int(node.args[6])
    c = x[1]
    size = ctx.size(c)
    for d in x[2:]:
        ctx.approx(d, "group statistics over spatial dims")
    if g > 1:
        per = ctx.fresh(size // g, "per_group")
        ctx.unify(c, Dim.prod([g, per]), "group norm layout")
        ctx.approx(per, "group norm statistics")
    else:
        ctx.approx(c, "group norm statistics")
    w_i, b_i = (2, 3) if str(node.target) == "aten.group_norm.default" else (1, 2)
    for a in (ctx.arg(w_i), ctx.arg(b_i)):
        d = ctx.dims(a)
        if d is not None:
            ctx.unify(d[0], c, "group norm affine")
            ctx.role(a, 0, "affine")
    if isinstance(node.meta.get("val"), (tuple, list)):
        return (x, None, None)
    return x


def embedding(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """embedding(W, idx): rows are addressed by token ids (not prunable), columns are the
    produced channels."""
    w, idx = ctx.need(node.args[0], "weight"), ctx.need(node.args[1], "indices")
    ctx.fix(w[0], "embedding rows are addressed by input indices")
    ctx.role(node.args[0], 1, "out")
    return idx + [w[1]]


__all__ = ["register", "norm_dim"]
