"""scaled_dot_product_attention: q [.., Hq, L, E], k [.., Hk, S, E], v [.., Hk, S, Ev]."""

from __future__ import annotations

from torch import fx

from prunepass.dims import Dim
from prunepass.rules._ops import overloads
from prunepass.rules.base import Registry, RuleContext, TensorDims, Unsupported
from prunepass.rules.pointwise import broadcast


def register(reg: Registry) -> None:
    reg.register(*overloads("scaled_dot_product_attention.default"))(sdpa)


def sdpa(ctx: RuleContext, node: fx.Node) -> TensorDims:
    """q.k contracts over E (q/k head_dim unify; with the default scale 1/sqrt(E) that group is
    approximate); k and v share heads and sequence; the output is [.., Hq, L, Ev].  With
    ``enable_gqa`` query heads are ``Hk * rep`` (each k/v head keeps its query heads)."""
    q, k, v = (ctx.need(node.args[i], n) for i, n in enumerate(("query", "key", "value")))
    if min(len(q), len(k), len(v)) < 2:
        raise Unsupported("attention operands need at least 2 dims")
    sq, sk, sv = (ctx.shape(node.args[i]) for i in range(3))
    ctx.unify(q[-1], k[-1], "query/key head_dim")
    ctx.tag(q[-1], "head_dim")
    ctx.tag(v[-1], "head_dim")
    if ctx.arg(7, "scale") is None:
        ctx.approx(q[-1], "attention scale 1/sqrt(head_dim) depends on this dim")
    if ctx.options.get("eager_compatible", True) and sq[-1] == sv[-1]:
        # eager attention code keeps one head_dim for q, k and v: keep their sizes equal so the
        # pruned module stays rebuildable (analyze(..., eager_compatible=False) lifts this)
        ctx.unify(q[-1], v[-1], "one head_dim for queries, keys and values")
    ctx.unify(k[-2], v[-2], "key/value sequence")
    ctx.approx(k[-2], "softmax normalises over the key sequence")
    kb, vb = k[:-2], v[:-2]
    for a, b in zip(kb, vb, strict=True):
        ctx.unify(a, b, "key/value batch and heads")
    qb = list(q[:-2])
    if ctx.arg(8, "enable_gqa", False) and len(qb) >= 1 and sq[-3] != sk[-3]:
        rep = ctx.fresh(sq[-3] // sk[-3], "query_heads_per_kv")
        ctx.unify(qb[-1], Dim.prod([kb[-1], rep]), "grouped-query heads")
        qb_check, kb_check = qb[:-1], kb[:-1]
        batch = broadcast(ctx, [(qb_check, tuple(sq[:-3])), (kb_check, tuple(sk[:-3]))]) + [qb[-1]]
    else:
        batch = broadcast(ctx, [(qb, tuple(sq[:-2])), (list(kb), tuple(sk[:-2]))])
    if len(q) >= 3:
        ctx.tag(q[-3], "heads")
    mask = ctx.arg(3, "attn_mask")
    out = batch + [q[-2], v[-1]]
    if mask is not None:
        md = ctx.need(mask, "attn_mask")
        scores = batch + [q[-2], k[-2]]
        shape_scores = tuple(sq[:-1]) + (sk[-2],)
        broadcast(ctx, [(scores, shape_scores), (md, ctx.shape(mask))])
    return out
