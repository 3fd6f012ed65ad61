"""Per-group channel constraints: minimum channels (absolute and relative) and a step."""

from __future__ import annotations

from dataclasses import dataclass

from prunepass.ir import Group


@dataclass(frozen=True)
class ChannelConstraint:
    """Widths a group may take: at least ``max(absolute_min, relative_min * size)`` channels
    (never more than the group has), in multiples of ``step`` (the full size is always
    allowed).  ``step=None`` picks 1 for groups of 64 channels or fewer and 4 above.  Groups of
    attention heads (tag ``heads``) always take any head count: the step is for channels."""

    absolute_min: int = 1
    relative_min: float = 0.0
    step: int | None = None

    def step_for(self, group: Group) -> int:
        if "heads" in group.tags:
            # a head count: every head is head-size channels wide, so any count keeps the
            # channel widths round; the step is for channel counts
            return 1
        if self.step is not None:
            return max(1, int(self.step))
        return 4 if group.size > 64 else 1

    def min_for(self, group: Group) -> int:
        low = max(int(self.absolute_min), int(self.relative_min * group.size), 1)
        return min(low, group.size)


def allowed_widths(group: Group, constraint: ChannelConstraint | None = None) -> list[int]:
    """Ascending list of widths the group may be pruned to (always includes its full size)."""
    c = constraint or ChannelConstraint()
    low, step = c.min_for(group), c.step_for(group)
    widths = [w for w in range(step, group.size + 1, step) if w >= low]
    if not widths or widths[-1] != group.size:
        widths.append(group.size)
    if low not in widths and low % step == 0:
        widths.insert(0, low)
    return sorted(set(widths))


def nearest_allowed(group: Group, width: float, constraint: ChannelConstraint | None = None) -> int:
    """The allowed width closest to ``width`` (ties towards the larger)."""
    options = allowed_widths(group, constraint)
    return min(options, key=lambda w: (abs(w - width), -w))
