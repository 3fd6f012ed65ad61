"""Layout ops: reshapes (flatten / head splits), permutes, (un)squeeze, expand, concatenation,
splitting, slicing and indexing, pixel shuffle, repeat."""

from __future__ import annotations

from torch import fx

from prunepass.dims import Dim, Sym
from prunepass.rules._ops import overloads
from prunepass.rules.base import Registry, RuleContext, TensorDims, Unsupported, norm_dim
from prunepass.solver import _align_prod


def register(reg: Registry) -> None:
    reg.register(*overloads("view.default", "reshape.default", "_unsafe_view.default", "view_copy.default",
                            "flatten.using_ints", "unflatten.int", "_reshape_alias.default"))(reshape)
    reg.register(*overloads("permute.default", "permute_copy.default"))(permute)
    reg.register(*overloads("transpose.int", "transpose_copy.int", "swapaxes.default"))(transpose)
    reg.register(*overloads("t.default", "numpy_T.default"))(transpose_2d)
    reg.register(*overloads("squeeze.dim", "squeeze.dims", "squeeze.default", "squeeze_.dim"))(squeeze)
    reg.register(*overloads("unsqueeze.default", "unsqueeze_.default"))(unsqueeze)
    reg.register(*overloads("expand.default", "expand_copy.default", "expand_as.default"))(expand)
    reg.register(*overloads("cat.default", "concat.default"))(cat)
    reg.register(*overloads("stack.default"))(stack)
    reg.register(*overloads("split.Tensor", "split_with_sizes.default", "chunk.default", "unbind.int",
                            "tensor_split.sections", "tensor_split.indices", "split_copy.Tensor",
                            "split_with_sizes_copy.default", "unsafe_split.Tensor"))(split)
    reg.register(*overloads("slice.Tensor", "narrow.default", "slice_copy.Tensor"))(slice_)
    reg.register(*overloads("select.int", "select_copy.int"))(select)
    reg.register(*overloads("index_select.default"))(index_select)
    reg.register(*overloads("pixel_shuffle.default"))(pixel_shuffle)
    reg.register(*overloads("pixel_unshuffle.default"))(pixel_unshuffle)
    reg.register(*overloads("repeat.default"))(repeat)
    reg.register(*overloads("repeat_interleave.self_int"))(repeat_interleave)
    reg.register(*overloads("flip.default", "roll.default"))(positional)


def reshape(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """view / reshape / flatten / unflatten.

    Input and output dims are grouped into blocks with equal element counts.  A block that
    merges dims becomes a row-major product (``flatten``: ``c*H*W``); a block that splits one
    symbol refines it into fresh factor symbols (``C := h*d`` for attention heads).  Blocks that
    both merge and split are unsupported (barrier).
    """
    x = ctx.need(node.args[0], "input")
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.out_shape()
    ins = [i for i, n in enumerate(in_shape) if n != 1]
    outs = [j for j, n in enumerate(out_shape) if n != 1]
    for i, n in enumerate(in_shape):
        if n == 1:
            ctx.unify(x[i], Dim.const(1))
    out: TensorDims = [Dim.const(1)] * len(out_shape)
    pairs = _align_prod([in_shape[i] for i in ins], [out_shape[j] for j in outs])
    if pairs is None:
        raise Unsupported(f"cannot group {in_shape} into {out_shape}")
    for ra, rb in pairs:
        src_idx, dst_idx = ins[ra], outs[rb]
        src = Dim.prod([x[i] for i in src_idx])
        targets = [out_shape[j] for j in dst_idx]
        for j, d in zip(dst_idx, _split_factors(ctx, src, targets), strict=True):
            out[j] = d
    return out


def _split_factors(ctx: RuleContext, src: Dim, targets: list[int]) -> list[Dim]:
    """Express ``src`` as a row-major product of dims with the ``targets`` sizes."""
    if len(targets) == 1:
        return [src]
    src = ctx.solver.norm(src)
    if len(src.segs) > 1:
        src = _cat_as_product(ctx, src, targets[0])
    factors = src.segs[0]
    sizes = [ctx.solver.size(f) for f in factors]
    pairs = _align_prod(sizes, targets)
    if pairs is None:
        raise Unsupported(f"cannot split {src!r} into {targets}")
    out: list[Dim] = []
    for ra, rb in pairs:
        fs, ts = factors[ra], targets[rb]
        if len(ts) == 1:
            out.append(Dim.prod(fs))
        elif len(fs) == 1 and isinstance(fs[0], int):
            out.extend(Dim.const(t) for t in ts)
        elif len(fs) == 1 and isinstance(fs[0], Sym):
            parts = [ctx.fresh(t, f"factor{k}") for k, t in enumerate(ts)]
            ctx.unify(Dim.sym(fs[0]), Dim.prod(parts), "reshape splits a channel dim")
            out.extend(parts)
        else:
            raise Unsupported(f"reshape both merges and splits {Dim.prod(fs)!r} into {list(ts)}")
    return out


def _cat_as_product(ctx: RuleContext, src: Dim, k: int) -> Dim:
    """``a + b`` viewed as ``(2, n)`` (channel shuffle): element (i, j) is channel j of segment
    i, so the segments must prune the same channels; they unify and the dim is ``k*a``."""
    segs = [Dim((seg,)) for seg in src.segs]
    sizes = {ctx.solver.size(s) for s in segs}
    if len(segs) != k or len(sizes) != 1:
        raise Unsupported(f"cannot split the concatenation {src!r} into a leading dim of {k}")
    for other in segs[1:]:
        ctx.unify(segs[0], other, "segments viewed as one row each (channel shuffle)")
    return ctx.solver.norm(Dim.prod([k, segs[0]]))


def permute(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Reorder dims."""
    x = ctx.need(node.args[0], "input")
    order = [norm_dim(int(d), len(x)) for d in node.args[1]]
    return [x[d] for d in order]


def transpose(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Swap two dims."""
    x = ctx.need(node.args[0], "input")
    a, b = norm_dim(int(node.args[1]), len(x)), norm_dim(int(node.args[2]), len(x))
    out = list(x)
    out[a], out[b] = out[b], out[a]
    return out


def transpose_2d(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """t(): reverse a <=2-d tensor."""
    return list(reversed(ctx.need(node.args[0], "input")))


def squeeze(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Drop dims of size 1."""
    x = ctx.need(node.args[0], "input")
    shape = ctx.shape(node.args[0])
    if len(node.args) > 1:
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        drop = {norm_dim(int(d), len(x)) for d in dims if shape[norm_dim(int(d), len(x))] == 1}
    else:
        drop = {i for i, n in enumerate(shape) if n == 1}
    return [d for i, d in enumerate(x) if i not in drop]


def unsqueeze(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Insert a dim of size 1."""
    x = ctx.need(node.args[0], "input")
    d = norm_dim(int(node.args[1]), len(x) + 1)
    return x[:d] + [Dim.const(1)] + x[d:]


def expand(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Broadcast size-1 dims (and new leading dims) to a size.  An expanded dim is a new
    symbol: it may later be merged into channels (grouped-query attention repeats k/v heads)."""
    x = ctx.need(node.args[0], "input")
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.out_shape()
    lead = len(out_shape) - len(in_shape)
    out: TensorDims = []
    for j, n in enumerate(out_shape):
        i = j - lead
        if i >= 0 and in_shape[i] == n:
            out.append(x[i])
        else:
            d = ctx.fresh(n, f"expand{j}")
            ctx.tag(d, "repeat")
            out.append(d)
    return out


def cat(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Concatenate: the cat dim becomes the ordered sum of the inputs' dims; the others unify."""
    tensors = [t for t in node.args[0] if ctx.shape(t) != (0,)]
    dims = [ctx.need(t, "cat input") for t in tensors]
    d = norm_dim(int(ctx.arg(1, "dim", 0)), len(dims[0]))
    out = list(dims[0])
    for other in dims[1:]:
        for i in range(len(out)):
            if i != d:
                ctx.unify(out[i], other[i], f"cat operands dim {i}")
    out[d] = Dim.cat([t[d] for t in dims])
    return out


def stack(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Stack along a new dim (a constant count); the other dims unify."""
    dims = [ctx.need(t, "stack input") for t in node.args[0]]
    d = norm_dim(int(ctx.arg(1, "dim", 0)), len(dims[0]) + 1)
    for other in dims[1:]:
        for i in range(len(other)):
            ctx.unify(dims[0][i], other[i], f"stack operands dim {i}")
    return dims[0][:d] + [Dim.const(len(dims))] + dims[0][d:]


def split(ctx: RuleContext, node: fx.Node) -> tuple[TensorDims, ...]:
    """split / chunk / unbind: the split dim becomes the ordered sum of the pieces."""
    x = ctx.need(node.args[0], "input")
    vals = node.meta.get("val")
    if not isinstance(vals, (list, tuple)):
        raise Unsupported("split output is not a list")
    op = str(node.target)
    if op.startswith("aten.unbind"):
        d = norm_dim(int(ctx.arg(1, "dim", 0)), len(x))
        ctx.unify(x[d], Dim.cat([Dim.const(1)] * len(vals)), "unbind")
        return tuple(x[:d] + x[d + 1:] for _ in vals)
    d = norm_dim(int(ctx.arg(2, "dim", 0)), len(x))
    sizes = [int(v.shape[d]) for v in vals]
    if len(sizes) > 1 and len(set(sizes)) == 1 and ctx.options.get("eager_compatible", True):
        # equal pieces come from code like chunk(2) or split(x, C // 2): keep them equal
        piece = ctx.fresh(sizes[0], "piece")
        pieces = [piece] * len(sizes)
    else:
        pieces = [ctx.fresh(n, f"piece{k}") for k, n in enumerate(sizes)]
    ctx.unify(x[d], Dim.cat(pieces), "split pieces")
    return tuple(x[:d] + [p] + x[d + 1:] for p in pieces)


def slice_(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """slice / narrow with step 1: the dim becomes ``before + kept + after``; the result keeps
    the middle segment.  Other steps on channel dims are unsupported."""
    x = ctx.need(node.args[0], "input")
    in_shape = ctx.shape(node.args[0])
    d = norm_dim(int(ctx.arg(1, "dim", 0)), len(x))
    n = in_shape[d]
    if str(node.target).startswith("aten.narrow"):
        start = int(node.args[2])
        start = start + n if start < 0 else start
        end, step = start + int(node.args[3]), 1
    else:
        start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1) or 1
        start = 0 if start is None else int(start)
        end = n if end is None else int(end)
        start = min(max(start + n if start < 0 else start, 0), n)
        end = min(max(end + n if end < 0 else end, start), n)
    out = list(x)
    if step != 1:
        if ctx.solver.live_symbols(x[d]):
            raise Unsupported(f"strided slice (step {step}) of a channel dim")
        out[d] = Dim.const(ctx.out_shape()[d])
        return out
    if (start, end) == (0, n):
        ctx.note("start", Dim.const(0))
        ctx.note("length", x[d])
        return out
    parts = [ctx.fresh(start, "before") if start else None, ctx.fresh(end - start, "kept"),
             ctx.fresh(n - end, "after") if end < n else None]
    ctx.unify(x[d], Dim.cat([p for p in parts if p is not None]), "slice segments")
    ctx.note("start", parts[0] if parts[0] is not None else Dim.const(0))
    ctx.note("length", parts[1])
    out[d] = parts[1]
    return out


def select(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """select one index: the dim disappears; selecting a single channel freezes that dim."""
    x = ctx.need(node.args[0], "input")
    d = norm_dim(int(node.args[1]), len(x))
    if ctx.solver.live_symbols(x[d]):
        ctx.barrier(x[d], f"select() picks index {node.args[2]} of this dim")
    return x[:d] + x[d + 1:]


def index_select(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Gather along a dim by an index tensor: that dim is frozen."""
    x = ctx.need(node.args[0], "input")
    d = norm_dim(int(node.args[1]), len(x))
    ctx.barrier(x[d], "indexed by a tensor (index_select)")
    out = list(x)
    out[d] = ctx.need(node.args[2], "index")[0]  # one result per index entry
    return out


def pixel_shuffle(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """[.., C*r*r, H, W] -> [.., C, H*r, W*r]: input channels are ``c*r*r``."""
    x = ctx.need(node.args[0], "input")
    r = int(node.args[1])
    out_shape = ctx.out_shape()
    c = ctx.fresh(out_shape[-3], "channels")
    ctx.unify(x[-3], Dim.prod([c, r, r]), "pixel_shuffle channel layout")
    for d in x[-2:]:
        ctx.fix(d, "spatial dim")
    return x[:-3] + [c, Dim.const(out_shape[-2]), Dim.const(out_shape[-1])]


def pixel_unshuffle(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """[.., C, H*r, W*r] -> [.., C*r*r, H, W]."""
    x = ctx.need(node.args[0], "input")
    r = int(node.args[1])
    out_shape = ctx.out_shape()
    for d in x[-2:]:
        ctx.fix(d, "spatial dim")
    return x[:-3] + [Dim.prod([x[-3], r, r]), Dim.const(out_shape[-2]), Dim.const(out_shape[-1])]


def repeat(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """Tile: a dim repeated r times is the product ``r*D`` (whole copies, row-major)."""
    x = ctx.need(node.args[0], "input")
    reps = [int(r) for r in node.args[1]]
    lead = len(reps) - len(x)
    out = [Dim.const(r) for r in reps[:lead]]
    for i, d in enumerate(x):
        r = reps[lead + i]
        out.append(d if r == 1 else Dim.prod([r, d]))
    return out


def repeat_interleave(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """repeat_interleave(x, r, dim): each element repeated in place, ``D*r``."""
    x = ctx.need(node.args[0], "input")
    dim = ctx.arg(2, "dim")
    if dim is None:
        raise Unsupported("repeat_interleave without dim flattens the input")
    d = norm_dim(int(dim), len(x))
    out = list(x)
    out[d] = Dim.prod([x[d], int(node.args[1])])
    return out


def positional(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """flip / roll move elements by position: channel dims touched are frozen."""
    x = ctx.need(node.args[0], "input")
    dims = ctx.arg(1 if str(node.target).startswith("aten.flip") else 2, "dims")
    if dims is None or dims == []:
        touched = range(len(x))
    else:
        dims = dims if isinstance(dims, (list, tuple)) else [dims]
        touched = [norm_dim(int(d), len(x)) for d in dims]
    for d in touched:
        ctx.barrier(x[d], "elements move by position (flip/roll)")
    return x
