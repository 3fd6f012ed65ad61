"""Property test: random small networks (an image/CNN family and a token/attention family)
through the whole analysis.

For every generated network we check that

1. ``analyze`` does not raise;
2. every parameter axis of size > 1 gets a verdict (prunable group, unprunable group with a
   reason, or a kernel/spatial dim frozen as "shape");
3. the sizes the solver predicts for every node equal the shapes torch.export recorded, and no
   node became a barrier because a rule failed its self-check or a unification failed (these
   networks use only supported ops);
4. pruning random channels of the prunable, exact groups is exact end to end: the rewritten
   program on sliced parameters equals the original program whose consumers ("in" members)
   have the removed input slices zeroed;
5. the dump is deterministic (twice on one analysis, and across two analyses of the model).

One generator sub-case is switched off because of a known prunepass limitation, see
``ALLOW_MISALIGNED_SPLITS``.  Networks are described by plain-data specs (tuples) so that a failing example prints as a
readable, reproducible list.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from prunepass import analyze
from prunepass.program import flat_inputs, rewrite_graph

BATCH, SPATIAL, SEQ, MAX_CH = 2, 4, 5, 16


# --------------------------------------------------------------------------- the model
class RandomNet(nn.Module):
    """A feed-forward network whose forward follows ``specs`` (a list of plain tuples).

    Spec kinds (first element), with the shape state they act on:

    * image ``[B, C, H, W]``: ``conv``, ``bnrelu``, ``cat``, ``split``, ``residual``,
      ``flatten_linear`` (moves to the vector state);
    * vector ``[B, F]`` and tokens ``[B, T, C]``: ``linear``, ``split``, ``residual_linear``;
    * tokens only: ``attn``.
    """

    def __init__(self, specs: list[tuple]) -> None:
        super().__init__()
        self.specs = [tuple(s) for s in specs]
        self.layers = nn.ModuleList(_build(s) for s in self.specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for spec, mod in zip(self.specs, self.layers, strict=True):
            x = _apply(spec, mod, x)
        return x


def _conv(cin: int, cout: int, k: int, groups: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)


def _build(spec: tuple) -> nn.Module:
    kind = spec[0]
    if kind == "conv":
        _, cin, cout, k, depthwise, bias = spec
        return _conv(cin, cout, k, groups=cin if depthwise else 1, bias=bias)
    if kind == "bnrelu":
        bn = nn.BatchNorm2d(spec[1])
        with torch.no_grad():  # non-trivial statistics, so pruning mistakes show numerically
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
        return bn
    if kind == "cat":
        _, cin, o1, k1, o2, k2 = spec
        return nn.ModuleList([_conv(cin, o1, k1), _conv(cin, o2, k2)])
    if kind == "residual":
        _, c, k = spec
        return _conv(c, c, k)
    if kind == "flatten_linear":
        _, fin, fout = spec
        return nn.Linear(fin, fout)
    if kind == "linear":
        _, fin, fout, _act, bias = spec
        return nn.Linear(fin, fout, bias=bias)
    if kind == "residual_linear":
        return nn.Linear(spec[1], spec[1])
    if kind == "attn":
        _, c, heads, hd, vd, cout = spec
        return nn.ModuleDict({
            "q": nn.Linear(c, heads * hd), "k": nn.Linear(c, heads * hd),
            "v": nn.Linear(c, heads * vd), "o": nn.Linear(heads * vd, cout),
        })
    if kind == "split":
        return nn.Identity()
    raise AssertionError(kind)


def _apply(spec: tuple, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    kind = spec[0]
    if kind == "conv":
        return mod(x)
    if kind == "bnrelu":
        return F.relu(mod(x))
    if kind == "cat":
        return torch.cat([mod[0](x), F.relu(mod[1](x))], dim=1)
    if kind == "residual":
        return F.relu(mod(x)) + x
    if kind == "flatten_linear":
        return mod(torch.flatten(x, 1))
    if kind == "linear":
        y = mod(x)
        return {"none": y, "relu": F.relu(y), "gelu": F.gelu(y)}[spec[3]]
    if kind == "residual_linear":
        return x + F.relu(mod(x))
    if kind == "split":
        _, dim, sizes, mode = spec
        parts = torch.split(x, list(sizes), dim=dim)
        if mode == "add":
            return parts[0] + parts[1]
        return torch.cat(list(reversed(parts)), dim=dim)
    if kind == "attn":
        _, c, heads, hd, vd, cout = spec
        b, t, _ = x.shape
        q = mod["q"](x).view(b, t, heads, hd).transpose(1, 2)
        k = mod["k"](x).view(b, t, heads, hd).transpose(1, 2)
        v = mod["v"](x).view(b, t, heads, vd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return mod["o"](o.transpose(1, 2).reshape(b, t, heads * vd))
    raise AssertionError(kind)


# --------------------------------------------------------------------------- the generator
#: Known prunepass limitation (reported to the library owner): a split whose cut falls inside a
#: segment of a channel *concatenation* (e.g. ``cat([3 ch, 3 ch])`` split ``[2, 4]``) cannot be
#: aligned by the solver (``Solver._unify`` only refines ``s*R`` against a Cat, not Cat against
#: Cat), so the split becomes a barrier ("unification failed: ... cannot align layouts") and
#: every group touching it is frozen.  Until that is fixed the generator only cuts a
#: concatenated channel axis at its existing segment boundaries (cuts of a single-symbol axis
#: are unrestricted).  Set to True to generate the failing sub-case.
ALLOW_MISALIGNED_SPLITS = True


def _split_spec(draw, dim: int, c: int, bounds: frozenset[int]) -> tuple[tuple, int, frozenset[int]] | None:
    """torch.split along ``dim`` then add two equal halves or cat the parts in reverse order.

    ``bounds`` are the segment boundaries of the channel layout of the input (empty for a
    single symbol); returns the spec, the new channel count and the new boundaries."""
    free = ALLOW_MISALIGNED_SPLITS or not bounds
    cut_points = list(range(1, c)) if free else sorted(bounds)
    h = c // 2
    low = frozenset(b for b in bounds if b < h)
    high = frozenset(b - h for b in bounds if b > h)
    modes = []
    if c % 2 == 0 and c >= 4 and (free or (h in bounds and low == high)):
        modes.append("add")
    if cut_points:
        modes.append("cat")
    if not modes:
        return None
    mode = draw(st.sampled_from(modes))
    if mode == "add":
        return ("split", dim, (h, h), "add"), h, low | high
    n_cuts = draw(st.integers(1, min(2, len(cut_points))))
    cuts = sorted(draw(st.lists(st.sampled_from(cut_points), min_size=n_cuts, max_size=n_cuts, unique=True)))
    starts, ends = [0, *cuts], [*cuts, c]
    sizes = tuple(b - a for a, b in zip(starts, ends, strict=True))
    # layout of the reversed concatenation: part boundaries plus the old inner boundaries
    new_bounds: set[int] = set()
    offset = 0
    for a, b in reversed(list(zip(starts, ends, strict=True))):
        new_bounds.update(offset + (x - a) for x in bounds if a < x < b)
        offset += b - a
        new_bounds.add(offset)
    new_bounds.discard(c)
    return ("split", dim, sizes, "cat"), c, frozenset(new_bounds)


@st.composite
def image_specs(draw):
    c0 = draw(st.integers(2, 4))
    c = c0
    bounds: frozenset[int] = frozenset()  # segment boundaries of the channel layout
    vector = False  # after flatten_linear the state is [B, F]
    specs: list[tuple] = []
    for _ in range(draw(st.integers(2, 8))):
        if vector:
            kinds = ["linear", "split", "residual_linear"]
        else:
            kinds = ["conv", "conv", "bnrelu", "cat", "split", "residual", "flatten_linear"]
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            depthwise = draw(st.booleans())
            cout = c if depthwise else draw(st.integers(2, 8))
            specs.append(("conv", c, cout, draw(st.sampled_from([1, 3])), depthwise, draw(st.booleans())))
            c, bounds = cout, (bounds if depthwise else frozenset())
        elif kind == "bnrelu":
            specs.append(("bnrelu", c))
        elif kind == "cat":
            o1 = draw(st.integers(2, 8))
            o2 = draw(st.integers(2, 8))
            specs.append(("cat", c, o1, draw(st.sampled_from([1, 3])), o2, draw(st.sampled_from([1, 3]))))
            c, bounds = o1 + o2, frozenset({o1})
        elif kind == "split":
            got = _split_spec(draw, 1, c, bounds)
            if got is None:
                continue
            specs.append(got[0])
            c, bounds = got[1], got[2]
        elif kind == "residual":
            specs.append(("residual", c, draw(st.sampled_from([1, 3]))))
        elif kind == "flatten_linear":
            cout = draw(st.integers(2, 8))
            specs.append(("flatten_linear", c * SPATIAL * SPATIAL, cout))
            c, bounds, vector = cout, frozenset(), True
        elif kind == "linear":
            cout = draw(st.integers(2, 8))
            specs.append(("linear", c, cout, draw(st.sampled_from(["none", "relu"])), draw(st.booleans())))
            c, bounds = cout, frozenset()
        elif kind == "residual_linear":
            specs.append(("residual_linear", c))
        assert c <= MAX_CH, specs
    return "image", c0, specs


@st.composite
def token_specs(draw):
    c0 = draw(st.sampled_from([4, 6, 8]))
    c = c0
    bounds: frozenset[int] = frozenset()
    specs: list[tuple] = []
    for _ in range(draw(st.integers(2, 8))):
        kind = draw(st.sampled_from(["linear", "attn", "attn", "split", "residual_linear"]))
        if kind == "linear":
            cout = draw(st.integers(2, 12))
            specs.append(("linear", c, cout, draw(st.sampled_from(["none", "relu", "gelu"])), draw(st.booleans())))
            c, bounds = cout, frozenset()
        elif kind == "attn":
            heads = draw(st.integers(1, 3))
            hd = draw(st.integers(2, 4))
            vd = draw(st.integers(2, 4))
            cout = draw(st.integers(2, 12))
            specs.append(("attn", c, heads, hd, vd, cout))
            c, bounds = cout, frozenset()
        elif kind == "split":
            got = _split_spec(draw, -1, c, bounds)
            if got is None:
                continue
            specs.append(got[0])
            c, bounds = got[1], got[2]
        elif kind == "residual_linear":
            specs.append(("residual_linear", c))
        assert c <= MAX_CH, specs
    return "tokens", c0, specs


@st.composite
def networks(draw, family: str):
    """(family, input channels, specs, seed): plain data, printed as the falsifying example."""
    _, c0, specs = draw(image_specs() if family == "image" else token_specs())
    seed = draw(st.integers(0, 2**16))
    return family, c0, specs, seed


def _make(family: str, c0: int, specs: list[tuple], seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = RandomNet(specs).eval()
    x = torch.randn(BATCH, c0, SPATIAL, SPATIAL) if family == "image" else torch.randn(BATCH, SEQ, c0)
    return model, x


# --------------------------------------------------------------------------- the properties
def _check_verdicts(a) -> None:
    """Property 2: every parameter axis of size > 1 is explained."""
    solver = a.flow.solver
    group_of = {a.symbol(g): g for g in a.groups}
    for node in a.flow.graph.nodes:
        if node.op != "placeholder":
            continue
        gi = a.captured.inputs.get(node.name)
        if gi is None or gi.kind != "parameter":
            continue
        shape = tuple(node.meta["val"].shape)
        dims = a.flow.env.get(node)
        assert isinstance(dims, list) and len(dims) == len(shape), (gi.target, dims)
        for axis, n in enumerate(shape):
            if n <= 1:
                continue
            expr = a.axis_expr(gi.target, axis)
            assert expr is not None, f"{gi.target}[{axis}] has no channel expression"
            assert solver.size(expr) == n, (gi.target, axis, expr)
            for s in solver.live_symbols(dims[axis]):
                g = group_of.get(s)
                if g is not None:
                    assert g.prunable or g.reasons, f"{gi.target}[{axis}]: {g.name} is unprunable without a reason"
                    assert not (g.prunable and g.reasons), g
                    assert any(m.fqn == gi.target and m.axis == axis for m in g.members), (g.name, gi.target, axis)
                    continue
                kinds = {k for k, _ in solver.frozen.get(s, [])}
                assert kinds == {"shape"}, (
                    f"{gi.target}[{axis}] symbol {s} ({solver.infos[s.id].origin}) has no verdict: "
                    f"not in a group and frozen as {sorted(kinds) or 'nothing'}")


def _check_sizes(a) -> None:
    """Property 3: predicted sizes equal the recorded shapes, and no rule failed its check."""
    solver = a.flow.solver
    for node in a.flow.graph.nodes:
        if node.op != "call_function":
            continue
        out = a.flow.env.get(node)
        val = node.meta.get("val")
        if isinstance(out, list):
            assert isinstance(val, torch.Tensor), node.name
            assert tuple(solver.size(d) for d in out) == tuple(val.shape), (node.name, node.target)
        elif isinstance(out, tuple):
            assert isinstance(val, (tuple, list)) and len(val) == len(out), node.name
            for dims, v in zip(out, val, strict=True):
                if dims is None:
                    continue
                assert tuple(solver.size(d) for d in dims) == tuple(v.shape), (node.name, node.target)
    bad = [b for b in a.flow.barriers if "self-check" in b.reason or "unification failed" in b.reason]
    assert not bad, bad


def _check_exact(a, model: nn.Module, x: torch.Tensor, rng: random.Random) -> int:
    """Property 4: prune random channels of every exact prunable group with a consumer."""
    keep: dict[str, list[int]] = {}
    for g in a.groups:
        if not g.prunable or g.approximate or not any(m.role == "in" for m in g.members):
            continue
        assert g.size >= 2, g
        keep[g.name] = sorted(rng.sample(range(g.size), rng.randint(1, g.size - 1)))
    roles = {(m.fqn, m.axis): m.role for g in a.groups for m in g.members}
    state = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    sliced, masked = {}, {}
    for fqn, t in state.items():
        s, m = t, t.clone()
        for axis in range(t.dim()):
            if a.axis_expr(fqn, axis) is None:
                continue
            idx = a.kept_indices(fqn, axis, keep)
            assert len(set(idx)) == len(idx) and all(0 <= i < t.shape[axis] for i in idx), (fqn, axis, idx)
            if len(idx) == t.shape[axis]:
                continue
            s = s.index_select(axis, torch.tensor(idx, dtype=torch.long))
            if roles.get((fqn, axis)) == "in":
                mask = torch.zeros(t.shape[axis], dtype=t.dtype)
                mask[idx] = 1
                shape = [1] * t.dim()
                shape[axis] = -1
                m = m * mask.view(shape)
        sliced[fqn], masked[fqn] = s, m
    gm = rewrite_graph(a.flow, a.keep_map(keep))
    with torch.no_grad():
        got = gm(*flat_inputs(a.flow, sliced, (x,), {}))
        ref = a.program.graph_module(*flat_inputs(a.flow, masked, (x,), {}))
        plain = a.program.graph_module(*flat_inputs(a.flow, state, (x,), {}))
        eager = model(x)
    got, ref, plain = list(got), list(ref), list(plain)
    assert len(got) == len(ref) == len(plain) == 1
    torch.testing.assert_close(plain[0], eager, atol=1e-5, rtol=1e-5)  # sanity: graph == eager
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-3)
    return len(keep)


def _run_properties(net) -> None:
    family, c0, specs, seed = net
    model, x = _make(family, c0, specs, seed)

    a = analyze(model, (x,))  # 1. never raises

    _check_verdicts(a)  # 2.
    _check_sizes(a)  # 3.
    pruned = _check_exact(a, model, x, random.Random(seed))  # 4.
    event(f"groups pruned in the exactness check: {'some' if pruned else 'none'}")

    text = a.dump()  # 5.
    assert a.dump() == text, "dump() is not deterministic"
    model2, x2 = _make(family, c0, specs, seed)
    assert analyze(model2, (x2,)).dump() == text, "a second analysis of the same model dumps differently"


_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(networks("image"))
def test_random_cnn_networks(net):
    """conv (dense / depthwise), batchnorm+relu, two-branch cat, split+add/cat, residual,
    flatten+linear and an MLP tail."""
    _run_properties(net)


@_SETTINGS
@given(networks("tokens"))
def test_random_attention_networks(net):
    """[B, T, C] tokens: linear, multi-head attention (view into heads, transpose, sdpa, merge),
    split+add/cat along channels, residual linear."""
    _run_properties(net)
