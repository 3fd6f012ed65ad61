"""Frozen facts produced by the analysis: members, groups, barriers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """One axis of one parameter or buffer that carries a group's channels.

    ``layout`` is the axis's channel expression (e.g. ``g3*g4`` for a fused head projection):
    the index mapping from the group's channels to rows of this axis follows from it.
    """

    fqn: str
    kind: str  # "parameter" | "buffer"
    axis: int
    role: str  # "in" | "out" | "inout" | "affine" | "other"
    layout: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Group:
    """A set of channels that must be pruned together."""

    index: int
    name: str  # "g<k>" when prunable, "u<k>" when not
    size: int
    prunable: bool
    members: tuple[Member, ...]
    reasons: tuple[str, ...]  # why not prunable (empty when prunable)
    approximate: tuple[str, ...]  # why pruning changes normalisation statistics
    tags: tuple[str, ...]  # "heads", "head_dim", "depthwise"
    labels: tuple[int, int]  # global channel labels [start, stop)
    min_channels: int = 1
    step: int = 1

    @property
    def is_approximate(self) -> bool:
        return bool(self.approximate)

    @property
    def granularity(self) -> str:
        return "head" if "heads" in self.tags else "channel"

    def label_text(self) -> str:
        """Seed-style label range: ``[--]:960:(75436, 76395)``; ``N`` marks unprunable."""
        flag = "-" if self.prunable else "N"
        return f"[{flag}-]:{self.size}:({self.labels[0]}, {self.labels[1] - 1})"

    def modules(self) -> list[str]:
        """Owning module names of the members, in order, without repeats."""
        seen: dict[str, None] = {}
        for m in self.members:
            seen.setdefault(m.fqn.rpartition(".")[0], None)
        return list(seen)


@dataclass(frozen=True)
class BarrierFact:
    node: str
    op: str
    reason: str
