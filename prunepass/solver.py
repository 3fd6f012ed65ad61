"""Unification of channel symbols: union-find, refinement bindings, freezes and flags.

The solver is the single mutable state of the dataflow pass.  Rules never touch it directly:
they call the narrow methods of :class:`~prunepass.rules.base.RuleContext`.

Three operations change what a symbol means:

* ``union(a, b)`` — two symbols are the same channels (an elementwise add, a conv input);
* ``bind(s, dim)`` — a symbol is refined into a layout of new ones (``c := h*d`` for a head
  split, ``c := a + b`` for a channel split);
* ``freeze(dim, kind, reason)`` — the symbols may not be pruned (graph input, barrier...).

A root symbol that is neither bound nor frozen, and that has parameter members, is a prunable
group.  Roots are the smallest id of their class, so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prunepass.dims import Dim, Factor, Sym, canon, concrete_size, render, symbols

#: freeze kinds: "io" (graph input/output), "barrier" (op we cannot reason about or a failed
#: check), "shape" (a dimension that is not a channel: kernel size, spatial, vocabulary...)
FREEZE_KINDS = ("io", "barrier", "shape")


@dataclass
class SymInfo:
    size: int
    origin: str  # where the symbol was created, e.g. "%conv2d.weight[0]"


@dataclass
class Solver:
    infos: list[SymInfo] = field(default_factory=list)
    parent: dict[Sym, Sym] = field(default_factory=dict)
    binding: dict[Sym, Dim] = field(default_factory=dict)
    frozen: dict[Sym, list[tuple[str, str]]] = field(default_factory=dict)
    approx: dict[Sym, list[str]] = field(default_factory=dict)
    tags: dict[Sym, set[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # failed unifications, in order
    _cache: dict = field(default_factory=dict, repr=False)  # norm() results; cleared on every change

    # ------------------------------------------------------------------ symbols
    def new_sym(self, size: int, origin: str) -> Sym:
        s = Sym(len(self.infos))
        self.infos.append(SymInfo(size, origin))
        self.parent[s] = s
        return s

    def size_of(self, s: Sym) -> int:
        return self.infos[s.id].size

    def find(self, s: Sym) -> Sym:
        root = s
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[s] != root:  # path compression
            self.parent[s], s = root, self.parent[s]
        return root

    # ------------------------------------------------------------------ normal form
    def norm(self, x: Factor) -> Dim:
        """Substitute roots and bindings; the result mentions only live (unbound) roots."""
        if isinstance(x, Dim) and len(x.segs) == 1 and len(x.segs[0]) == 1 and isinstance(x.segs[0][0], Sym):
            s = x.segs[0][0]
            r = self.find(s)
            if r not in self.binding:  # fast path: one live symbol
                return x if r == s else Dim.sym(r)
        out = self._cache.get(x)
        if out is None:
            out = canon(self._norm(x))
            self._cache[x] = out
        return out

    def _norm(self, x: Factor) -> Dim:
        if isinstance(x, int):
            return Dim.const(x)
        if isinstance(x, Sym):
            r = self.find(x)
            b = self.binding.get(r)
            return self._norm(b) if b is not None else Dim.sym(r)
        return Dim(tuple(tuple(self._norm(f) for f in seg) for seg in x.segs))

    def size(self, x: Factor) -> int:
        return concrete_size(x, _SizeView(self))

    def live_symbols(self, x: Factor) -> list[Sym]:
        return symbols(self.norm(x))

    # ------------------------------------------------------------------ flags
    def freeze(self, x: Factor, kind: str, reason: str) -> None:
        assert kind in FREEZE_KINDS, kind
        for s in self.live_symbols(x):
            entries = self.frozen.setdefault(s, [])
            if (kind, reason) not in entries:
                entries.append((kind, reason))

    def mark_approx(self, x: Factor, reason: str) -> None:
        for s in self.live_symbols(x):
            reasons = self.approx.setdefault(s, [])
            if reason not in reasons:
                reasons.append(reason)

    def tag(self, x: Factor, tag: str) -> None:
        for s in self.live_symbols(x):
            self.tags.setdefault(s, set()).add(tag)

    def is_frozen(self, s: Sym) -> bool:
        return self.find(s) in self.frozen

    # ------------------------------------------------------------------ unification
    def unify(self, a: Factor, b: Factor, why: str) -> bool:
        """Make ``a`` and ``b`` denote the same channels.  On failure, freeze both sides as a
        barrier with a reason and return False: a failed unification never yields a group."""
        na, nb = self.norm(a), self.norm(b)
        if na == nb:
            return True
        if self.size(na) != self.size(nb):
            self._fail(na, nb, f"{why}: sizes {self.size(na)} != {self.size(nb)}")
            return False
        return self._unify(na, nb, why)

    def _unify(self, a: Dim, b: Dim, why: str) -> bool:
        a, b = self.norm(a), self.norm(b)
        if a == b:
            return True
        ca, cb = a.const_value(), b.const_value()
        if ca is not None or cb is not None:
            if ca is not None and cb is not None:
                return True  # equal sizes were checked by the caller
            self.freeze(a if ca is None else b, "shape", f"{why}: equated with the constant {ca if cb is None else cb}")
            return True
        sa, sb = a.single_sym(), b.single_sym()
        if sa is not None and sb is not None:
            self._union(sa, sb)
            return True
        if sa is not None:
            return self._bind(sa, b, why)
        if sb is not None:
            return self._bind(sb, a, why)
        if len(a.segs) > 1 or len(b.segs) > 1:
            pairs = _align_sum([self.size(Dim((s,))) for s in a.segs], [self.size(Dim((s,))) for s in b.segs])
            if pairs is None or len(pairs) == 1:  # no finer alignment: no progress possible
                if self._split_at_boundaries(a, b) | self._split_at_boundaries(b, a):
                    return self._unify(a, b, why)
                return self._fail(a, b, f"{why}: cannot align layouts {a!r} and {b!r}")
            ok = True
            for ra, rb in pairs:
                ok &= self._unify(canon(Dim(a.segs[ra])), canon(Dim(b.segs[rb])), why)
            return ok
        fa, fb = a.segs[0], b.segs[0]
        pairs = _align_prod([self.size(f) for f in fa], [self.size(f) for f in fb])
        if pairs is None or (len(pairs) == 1 and len(fa) > 1 and len(fb) > 1):
            return self._fail(a, b, f"{why}: cannot align layouts {a!r} and {b!r}")
        if len(pairs) == 1:  # one side is a single non-symbol factor: a constant or a Cat
            return self._fail(a, b, f"{why}: {a!r} and {b!r} cannot be equated")
        ok = True
        for ra, rb in pairs:
            ok &= self._unify(Dim.prod(fa[ra]), Dim.prod(fb[rb]), why)
        return ok

    def _split_at_boundaries(self, a: Dim, b: Dim) -> bool:
        """Cut the segments of ``a`` at the segment boundaries of ``b`` that fall inside them.

        A segment ``s*R`` (outermost symbol ``s``, the rest of size ``r``) cut at offsets that
        are multiples of ``r`` becomes ``(s1 + s2 + ...)*R``: ``s`` is bound to the pieces.
        Returns whether anything was bound."""
        cuts = set(_prefix(self.size(Dim((seg,))) for seg in b.segs))
        changed = False
        offset = 0
        for seg in a.segs:
            n = self.size(Dim((seg,)))
            inner = sorted(c - offset for c in cuts if offset < c < offset + n)
            offset += n
            if not inner or not isinstance(seg[0], Sym):
                continue
            r = self.size(Dim.prod(seg[1:])) if len(seg) > 1 else 1
            if any(c % r for c in inner):
                continue
            edges = [0] + [c // r for c in inner] + [n // r]
            pieces = [Dim.sym(self.new_sym(hi - lo, f"{self.infos[seg[0].id].origin}/piece"))
                      for lo, hi in zip(edges, edges[1:], strict=False)]
            changed |= self._bind(seg[0], Dim.cat(pieces), "cut at a boundary")
        return changed

    def _union(self, a: Sym, b: Sym) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        keep, drop = (ra, rb) if ra.id < rb.id else (rb, ra)
        self.parent[drop] = keep
        self._cache.clear()
        for table in (self.frozen, self.approx):
            if drop in table:
                merged = table.setdefault(keep, [])
                for item in table.pop(drop):
                    if item not in merged:
                        merged.append(item)
        if drop in self.tags:
            self.tags.setdefault(keep, set()).update(self.tags.pop(drop))

    def _bind(self, s: Sym, value: Dim, why: str) -> bool:
        s = self.find(s)
        if s in symbols(value):
            return self._fail(Dim.sym(s), value, f"{why}: {s!r} would contain itself")
        self.binding[s] = value
        self._cache.clear()
        for kind, reason in self.frozen.pop(s, []):
            self.freeze(value, kind, reason)
        for reason in self.approx.pop(s, []):
            self.mark_approx(value, reason)
        for t in self.tags.pop(s, set()):
            self.tag(value, t)
        return True

    def _fail(self, a: Dim, b: Dim, reason: str) -> bool:
        self.failures.append(reason)
        self.freeze(a, "barrier", reason)
        self.freeze(b, "barrier", reason)
        return False

    def render(self, x: Factor, name=repr) -> str:
        return render(self.norm(x), name)


class _SizeView(dict):
    """A read-only mapping Sym -> size backed by the solver."""

    def __init__(self, solver: Solver) -> None:
        super().__init__()
        self._solver = solver

    def __getitem__(self, s: Sym) -> int:
        return self._solver.size_of(s)


def _prefix(sizes) -> list[int]:
    out, total = [], 0
    for n in sizes:
        total += n
        out.append(total)
    return out


def _align_sum(xs: list[int], ys: list[int]) -> list[tuple[slice, slice]] | None:
    """Group two lists of segment sizes into consecutive runs with equal sums."""
    return _align(xs, ys, lambda acc, v: acc + v, 0)


def _align_prod(xs: list[int], ys: list[int]) -> list[tuple[slice, slice]] | None:
    """Group two lists of factor sizes into consecutive runs with equal products."""
    return _align(xs, ys, lambda acc, v: acc * v, 1)


def _align(xs, ys, op, unit) -> list[tuple[slice, slice]] | None:
    """Pairs of slices (of xs, of ys) whose accumulated totals match, or None."""
    pairs: list[tuple[slice, slice]] = []
    i = j = 0
    si, sj = i, j
    acc_x = acc_y = unit
    while i < len(xs) or j < len(ys):
        if acc_x == acc_y and acc_x != unit and (i > si) and (j > sj):
            pairs.append((slice(si, i), slice(sj, j)))
            si, sj = i, j
            acc_x = acc_y = unit
            continue
        if (acc_x <= acc_y and i < len(xs)) or j >= len(ys):
            acc_x = op(acc_x, xs[i])
            i += 1
        else:
            acc_y = op(acc_y, ys[j])
            j += 1
    if acc_x != acc_y:
        return None
    if i > si or j > sj:
        pairs.append((slice(si, i), slice(sj, j)))
    return pairs
