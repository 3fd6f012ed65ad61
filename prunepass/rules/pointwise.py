"""Families of shape-preserving and reducing ops: elementwise (with broadcasting), identity
layout ops, reductions, softmax, pooling, upsampling and tensor creation."""

from __future__ import annotations

import re

from torch import fx

from prunepass.dims import Dim
from prunepass.rules._ops import overloads, with_inplace
from prunepass.rules.base import Registry, RuleContext, TensorDims, Unsupported, norm_dim, tensor_args

UNARY = [
    # activations and math: y[i] = f(x[i])
    *with_inplace("relu.default", "gelu.default", "silu.default", "sigmoid.default", "tanh.default"),
    *with_inplace("hardswish.default", "hardsigmoid.default", "hardtanh.default", "leaky_relu.default"),
    *with_inplace("elu.default", "selu.default", "celu.default", "mish.default", "relu6.default"),
    *with_inplace("exp.default", "log.default", "sqrt.default", "rsqrt.default", "reciprocal.default"),
    *with_inplace("neg.default", "abs.default", "sin.default", "cos.default", "erf.default"),
    *with_inplace("clamp.default", "clamp_min.default", "clamp_max.default", "pow.Tensor_Scalar"),
    *with_inplace("add.Scalar", "sub.Scalar", "mul.Scalar", "div.Scalar", "floor.default", "round.default"),
    "softplus.default", "log1p.default", "expm1.default", "square.default", "sign.default",
    "rsub.Scalar", "logical_not.default", "bitwise_not.default", "nan_to_num.default",
    "eq.Scalar", "ne.Scalar", "lt.Scalar", "le.Scalar", "gt.Scalar", "ge.Scalar", "ceil.default",
    # identity: same values, same layout
    "dropout.default", "dropout_.default", "alpha_dropout.default", "feature_alpha_dropout.default",
    "clone.default", "contiguous.default", "detach.default", "detach_.default", "alias.default",
    "lift_fresh_copy.default", "_to_copy.default", "to.dtype", "to.dtype_layout", "to.device",
    "to.other", "type_as.default", "zeros_like.default", "ones_like.default", "empty_like.default",
    "full_like.default", "rand_like.default", "randn_like.default", "fill.Scalar", "fill_.Scalar",
    "bernoulli.p", "native_dropout.default", "pow.Scalar",
]

BROADCAST = [
    # elementwise with numpy broadcasting: operand dims of equal size unify
    *with_inplace("add.Tensor", "sub.Tensor", "mul.Tensor", "div.Tensor", "pow.Tensor_Tensor"),
    "div.Tensor_mode", "rsub.Tensor", "maximum.default", "minimum.default", "where.self",
    "where.ScalarOther", "where.ScalarSelf", "masked_fill.Scalar", "masked_fill.Tensor",
    "masked_fill_.Scalar", "eq.Tensor", "ne.Tensor", "lt.Tensor", "le.Tensor", "gt.Tensor",
    "ge.Tensor", "logical_and.default", "logical_or.default", "lerp.Scalar", "lerp.Tensor",
    "addcmul.default", "addcdiv.default", "copy_.default", "copy.default", "clamp.Tensor",
    "atan2.default", "remainder.Scalar", "remainder.Tensor", "fmod.Scalar",
    "__and__.Tensor", "__or__.Tensor", "__xor__.Tensor", "bitwise_and.Tensor", "bitwise_or.Tensor",
    "bitwise_xor.Tensor", "logical_xor.default",
]

# reductions: (op spec, exact-when-channels-are-zero?)
REDUCE = {
    "sum.dim_IntList": True, "sum.default": True,
    "mean.dim": False, "mean.default": False, "amax.default": False, "amin.default": False,
    "var.correction": False, "var.dim": False, "std.correction": False, "std.dim": False,
    "logsumexp.default": False, "linalg_vector_norm.default": False, "prod.dim_int": False,
    "any.dim": False, "all.dim": False, "argmax.default": False, "argmin.default": False,
    "max.dim": False, "min.dim": False, "var_mean.correction": False,
}

SOFTMAX = ["_softmax.default", "softmax.int", "_log_softmax.default", "log_softmax.int"]

POOL = [
    "max_pool1d.default", "max_pool2d.default", "max_pool3d.default", "avg_pool1d.default",
    "avg_pool2d.default", "avg_pool3d.default", "adaptive_avg_pool1d.default",
    "adaptive_avg_pool2d.default", "adaptive_avg_pool3d.default", "_adaptive_avg_pool2d.default",
    "_adaptive_avg_pool3d.default", "adaptive_max_pool1d.default", "adaptive_max_pool2d.default",
    "adaptive_max_pool3d.default", "max_pool2d_with_indices.default", "max_pool3d_with_indices.default",
    "upsample_nearest1d.vec", "upsample_nearest2d.vec", "upsample_nearest3d.vec",
    "upsample_nearest1d.default", "upsample_nearest2d.default", "upsample_nearest3d.default",
    "upsample_linear1d.vec", "upsample_bilinear2d.vec", "upsample_trilinear3d.vec",
    "upsample_bicubic2d.vec", "upsample_bilinear2d.default", "_upsample_nearest_exact2d.vec",
    "_upsample_bilinear2d_aa.vec", "upsample_linear1d.default", "upsample_trilinear3d.default",
]

CREATE = [
    "arange.default", "arange.start", "arange.start_step", "zeros.default", "ones.default",
    "full.default", "empty.memory_format", "scalar_tensor.default", "new_zeros.default",
    "new_ones.default", "new_full.default", "new_empty.default", "randn.default", "rand.default",
    "eye.default", "linspace.default", "randint.default", "randint.low",
]


def register(reg: Registry) -> None:
    reg.register(*overloads(*UNARY))(unary)
    reg.register(*overloads(*BROADCAST))(broadcast_op)
    for spec, exact in REDUCE.items():
        reg.register(*overloads(spec))(_reduce_rule(exact))
    reg.register(*overloads(*SOFTMAX))(softmax)
    reg.register(*overloads(*POOL))(pool)
    reg.register(*overloads(*CREATE))(create)
    reg.register(*overloads("tril.default", "triu.default", "tril_.default", "triu_.default"))(tri)
    reg.register(*overloads("prelu.default", "_prelu_kernel.default"))(prelu)
    reg.register(*overloads("constant_pad_nd.default", "pad.default", "reflection_pad1d.default",
                            "reflection_pad2d.default", "replication_pad1d.default",
                            "replication_pad2d.default"))(constant_pad)
    reg.register(*overloads("_assert_tensor_metadata.default", "_assert_scalar.default",
                            "sym_constrain_range_for_size.default", "_assert_async.msg"))(assertion)


def unary(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """y = f(x): every dim passes through (extra tensor args broadcast onto x)."""
    x = ctx.need(node.args[0], "input")
    if len([a for a in tensor_args(node)]) > 1:
        return broadcast_op(ctx, node)
    shape = ctx.shape(node)
    if str(node.target).startswith("aten.native_dropout"):
        return (x, x)  # (output, mask)
    if shape is not None and len(shape) != len(x):
        raise Unsupported(f"output rank {len(shape)} differs from input rank {len(x)}")
    return x


def broadcast(ctx: RuleContext, operands: list[tuple[TensorDims, tuple[int, ...]]]) -> TensorDims:
    """Numpy broadcasting over several operands; equal non-1 sizes unify."""
    ndim = max(len(s) for _, s in operands)
    out: TensorDims = []
    for i in range(ndim):
        big: list[Dim] = []
        for dims, shape in operands:
            j = i - (ndim - len(shape))
            if j >= 0 and shape[j] != 1:
                big.append(dims[j])
        if not big:
            out.append(Dim.const(1))
            continue
        for d in big[1:]:
            ctx.unify(big[0], d, f"broadcast dim {i}")
        out.append(big[0])
    return out


def broadcast_op(ctx: RuleContext, node: fx.Node) -> TensorDims:
    operands = []
    for a in tensor_args(node):
        d, s = ctx.dims(a), ctx.shape(a)
        if d is None or s is None:
            raise Unsupported(f"operand %{a.name} is not a tensor with known dims")
        operands.append((d, s))
    if not operands:
        raise Unsupported("no tensor operands")
    return broadcast(ctx, operands)


def _dims_arg(ctx: RuleContext, node: fx.Node, ndim: int, index: int = 1, name: str = "dim") -> list[int]:
    dim = ctx.arg(index, name)
    if dim is None or dim == []:
        return list(range(ndim))
    if isinstance(dim, int):
        dim = [dim]
    return sorted(norm_dim(int(d), ndim) for d in dim)


def _reduce_rule(exact: bool):
    def reduce(ctx: RuleContext, node: fx.Node):
        """Reduction: reduced dims vanish (or become 1 with keepdim); reducing channels is
        exact for sum, approximate for mean/var/max (pruning changes the statistic)."""
        x = ctx.need(node.args[0], "input")
        op = str(node.target)
        keep_idx = 3 if op.startswith(("aten.var.", "aten.std.", "aten.var_mean.", "aten.linalg_vector_norm")) else 2
        if op.endswith((".default",)) and op.startswith(("aten.sum.", "aten.mean.")):
            red = list(range(len(x)))
            keepdim = False
        elif op.startswith("aten.linalg_vector_norm"):
            red = _dims_arg(ctx, node, len(x), 2)
            keepdim = bool(ctx.arg(3, "keepdim", False))
        else:
            red = _dims_arg(ctx, node, len(x))
            keepdim = bool(ctx.arg(keep_idx, "keepdim", False))
        for d in red:
            if not exact:
                ctx.approx(x[d], f"reduces over dim {d}")
        out = [Dim.const(1) if i in red else x[i] for i in range(len(x)) if keepdim or i not in red]
        out_shape = ctx.shape(node)
        if isinstance(node.meta.get("val"), (tuple, list)):
            return (out, out)
        if out_shape is not None and len(out_shape) != len(out):
            raise Unsupported(f"unexpected output rank {len(out_shape)}")
        return out

    reduce.__name__ = "reduce_exact" if exact else "reduce_approx"
    return reduce


def softmax(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """softmax over dim: shape preserved; normalising over channels is approximate."""
    x = ctx.need(node.args[0], "input")
    d = norm_dim(int(node.args[1]), len(x))
    ctx.approx(x[d], f"softmax normalises over dim {d}")
    return x


_SPATIAL = re.compile(r"(\d)d")


def pool(ctx: RuleContext, node: fx.Node):
    """Pooling / upsampling: leading (batch, channel) dims pass through, spatial dims are not
    channels (the output spatial size is a new constant)."""
    x = ctx.need(node.args[0], "input")
    m = _SPATIAL.search(str(node.target))
    if m is None:
        raise Unsupported("cannot tell the number of spatial dims")
    k = int(m.group(1))
    val = node.meta.get("val")
    out_shape = tuple(val[0].shape) if isinstance(val, (tuple, list)) else ctx.out_shape()
    lead = len(x) - k
    if lead < 1:
        raise Unsupported("input has no channel dim")
    for d in x[lead:]:
        ctx.fix(d, "spatial dim of pooling/upsampling")
    out = x[:lead] + [Dim.const(int(s)) for s in out_shape[lead:]]
    if isinstance(val, (tuple, list)):
        return (out, list(out))
    return out


def create(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Tensor created from literal sizes: its dims are new, frozen symbols."""
    shape = ctx.out_shape()
    out = []
    for i, n in enumerate(shape):
        d = ctx.fresh(n, f"dim{i}")
        ctx.barrier(d, "tensor created from literal sizes")
        out.append(d)
    return out


def tri(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """tril/triu mask the last two dims by position: those must not be channels."""
    x = ctx.need(node.args[0], "input")
    for d in x[-2:]:
        ctx.fix(d, "masked by position (tril/triu)")
    return x


def prelu(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """prelu(x, w): w has one value per channel (dim 1) or a single shared value."""
    x = ctx.need(node.args[0], "input")
    w = ctx.need(node.args[1], "weight")
    if len(w) == 1 and ctx.shape(node.args[1]) != (1,):
        ctx.unify(w[0], x[1] if len(x) > 1 else x[0], "prelu weight per channel")
        ctx.role(node.args[1], 0, "affine")
    return x


def constant_pad(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Constant padding: padded dims get new constant sizes and must not be channels."""
    x = ctx.need(node.args[0], "input")
    pad = list(node.args[1])
    out = list(x)
    shape = ctx.out_shape()
    for k in range(len(pad) // 2):
        d = len(x) - 1 - k
        if pad[2 * k] or pad[2 * k + 1]:
            ctx.fix(x[d], "padded dim")
            out[d] = Dim.const(shape[d])
    return out


def assertion(ctx: RuleContext, node: fx.Node) -> None:
    """Run-time checks inserted by export: no result, no effect on channels."""
    return None
