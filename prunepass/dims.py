"""The channel-layout algebra: symbolic dimension expressions.

A tensor dimension is described by a :class:`Dim`, an *ordered* concatenation of segments
(``Cat``), each segment a row-major product of factors (``Prod``).  A factor is a channel
symbol (:class:`Sym`), a plain integer (a dimension that is not a channel, such as a kernel
size or a literal repeat count) or a nested :class:`Dim`.

Examples (``c``, ``h``, ``d`` are symbols)::

    c              a conv output channel axis
    (a + b)        torch.cat of two channel groups, a first
    c*7*7          flatten of [c, 7, 7]
    h*d            C split into heads x head_dim

Order matters (``a + b`` is not ``b + a``), which is why this is not plain sympy.  Sizes are
not stored here: a :class:`~prunepass.solver.Solver` knows each symbol's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True, order=True)
class Sym:
    """A channel symbol, numbered in creation (topological) order."""

    id: int

    def __repr__(self) -> str:
        return f"s{self.id}"


Factor = Union[Sym, int, "Dim"]


@dataclass(frozen=True)
class Dim:
    """An ordered concatenation of row-major products of factors."""

    segs: tuple[tuple[Factor, ...], ...]

    @staticmethod
    def sym(s: Sym) -> Dim:
        return Dim(((s,),))

    @staticmethod
    def const(n: int) -> Dim:
        return Dim(((n,),))

    @staticmethod
    def prod(factors: list[Factor] | tuple[Factor, ...]) -> Dim:
        return canon(Dim((tuple(factors),)))

    @staticmethod
    def cat(parts: list[Dim] | tuple[Dim, ...]) -> Dim:
        return canon(Dim(tuple((p,) for p in parts)))

    def single_sym(self) -> Sym | None:
        """The symbol if this Dim is exactly one symbol, else None."""
        if len(self.segs) == 1 and len(self.segs[0]) == 1 and isinstance(self.segs[0][0], Sym):
            return self.segs[0][0]
        return None

    def const_value(self) -> int | None:
        """The integer if this Dim holds no symbol, else None."""
        if symbols(self):
            return None
        return concrete_size(self, {})

    def __repr__(self) -> str:
        return render(self, repr)


def symbols(x: Factor) -> list[Sym]:
    """All symbols in ``x`` in order of appearance (with repeats removed)."""
    out: list[Sym] = []
    seen: set[Sym] = set()

    def walk(f: Factor) -> None:
        if isinstance(f, Sym):
            if f not in seen:
                seen.add(f)
                out.append(f)
        elif isinstance(f, Dim):
            for seg in f.segs:
                for g in seg:
                    walk(g)

    walk(x)
    return out


def concrete_size(x: Factor, sizes: dict[Sym, int]) -> int:
    """Size of ``x`` given a size for every symbol in it."""
    if isinstance(x, int):
        return x
    if isinstance(x, Sym):
        return sizes[x]
    total = 0
    for seg in x.segs:
        p = 1
        for f in seg:
            p *= concrete_size(f, sizes)
        total += p
    return total


def canon(d: Dim) -> Dim:
    """Canonical form: flatten nested Cat/Prod, drop factors 1, fold constants, distribute an
    outermost Cat factor over the rest of its product."""
    segs: list[tuple[Factor, ...]] = []
    for seg in d.segs:
        for s in _canon_seg(seg):
            segs.append(s)
    # merge adjacent constant segments: [2] + [3] stays as-is (ordering info is irrelevant for
    # constants, but keeping them separate keeps alignment exact); nothing to merge.
    if not segs:
        segs = [(0,)]
    return Dim(tuple(segs))


def _canon_seg(seg: tuple[Factor, ...]) -> list[tuple[Factor, ...]]:
    """Canonicalise one product; may return several segments (distribution of a Cat)."""
    flat: list[Factor] = []
    for f in seg:
        if isinstance(f, Dim):
            f = canon(f)
            if len(f.segs) == 1:
                flat.extend(f.segs[0])
                continue
        flat.append(f)
    if any(f == 0 for f in flat):
        return []
    # fold constants only when they are adjacent (row-major order must be preserved)
    folded: list[Factor] = []
    for f in flat:
        if isinstance(f, int) and folded and isinstance(folded[-1], int):
            folded[-1] = folded[-1] * f
        elif f != 1:
            folded.append(f)
    if not folded:
        folded = [1]
    first = folded[0]
    if isinstance(first, Dim) and len(first.segs) > 1:
        rest = tuple(folded[1:])
        out: list[tuple[Factor, ...]] = []
        for s in first.segs:
            out.extend(_canon_seg(tuple(s) + rest))
        return out
    return [tuple(folded)]


def render(x: Factor, name) -> str:
    """Text form; ``name`` maps a Sym to its printed name."""
    if isinstance(x, int):
        return str(x)
    if isinstance(x, Sym):
        return name(x)
    parts = []
    for seg in x.segs:
        parts.append("*".join(render(f, name) if not _is_cat(f) else f"({render(f, name)})" for f in seg))
    text = " + ".join(parts)
    return text


def _is_cat(f: Factor) -> bool:
    return isinstance(f, Dim) and len(f.segs) > 1


def kept_indices(x: Factor, sizes: dict[Sym, int], keep: dict[Sym, list[int]]) -> list[int]:
    """Flat indices of ``x`` that survive when each symbol keeps ``keep[sym]`` (all if absent).

    Row-major products: index = sum(i_k * stride_k); concatenations add segment offsets.
    """
    if isinstance(x, int):
        return list(range(x))
    if isinstance(x, Sym):
        return list(keep[x]) if x in keep else list(range(sizes[x]))
    out: list[int] = []
    offset = 0
    for seg in x.segs:
        seg_size = 1
        idx = [0]
        for f in seg:
            n = concrete_size(f, sizes)
            kept = kept_indices(f, sizes, keep)
            idx = [i * n + k for i in idx for k in kept]
            seg_size *= n
        out.extend(offset + i for i in idx)
        offset += seg_size
    return out


def new_size(x: Factor, sizes: dict[Sym, int], keep: dict[Sym, list[int]]) -> int:
    """Size of ``x`` after pruning (symbols with an entry in ``keep`` take its length)."""
    if isinstance(x, int):
        return x
    if isinstance(x, Sym):
        return len(keep[x]) if x in keep else sizes[x]
    total = 0
    for seg in x.segs:
        p = 1
        for f in seg:
            p *= new_size(f, sizes, keep)
        total += p
    return total


def owner_indices(x: Factor, sizes: dict[Sym, int], target: Sym) -> list[int]:
    """For every flat index of ``x``, the index along ``target`` it belongs to (-1 if ``target``
    does not occur in that segment).  Linear in the size of ``x``."""
    if isinstance(x, int):
        return [-1] * x
    if isinstance(x, Sym):
        return list(range(sizes[x])) if x == target else [-1] * sizes[x]
    out: list[int] = []
    for seg in x.segs:
        idx = [-1]
        for f in seg:
            sub = owner_indices(f, sizes, target)
            idx = [i if j < 0 else j for i in idx for j in sub]
        out.extend(idx)
    return out
