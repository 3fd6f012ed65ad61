"""Per-group channel constraints: minimum channels (absolute and relative), a step, and rules
that give some groups their own constraint or keep them whole."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from prunepass.ir import Group


@dataclass(frozen=True)
class ChannelConstraint:
    """Widths a group may take: at least ``max(absolute_min, relative_min * size)`` channels
    (never more than the group has), in multiples of ``step`` (the full size is always
    allowed).  ``step=None`` picks 1 for groups of 64 channels or fewer and 4 above.  Groups of
    attention heads (tag ``heads``) always take any head count: the step is for channels.

    ``rules`` maps glob patterns to the constraint of the groups they match, or to ``None`` to
    keep those groups whole.  A pattern matches a group by its name (``g3``), one of its tags
    (``heads``, ``head_dim``, ``depthwise``) or the name of a module whose own channels they are
    (its outputs, or a norm's: ``conv1``, ``layer4.*``; a module that only reads them does not
    match).  The last matching rule wins, and a rule's ``step=None`` takes this constraint's
    step.  For example
    ``ChannelConstraint(step=8, rules={"classifier*": None, "head_dim": None})`` never prunes
    the groups of the classifier and removes attention heads only whole (no head narrower)::

        ChannelConstraint(rules={"layer1.*": ChannelConstraint(relative_min=0.5)})

    A dict of a rule's fields is taken for a ``ChannelConstraint``."""

    absolute_min: int = 1
    relative_min: float = 0.0
    step: int | None = None
    rules: Mapping[str, ChannelConstraint | None] | tuple = ()

    def __post_init__(self) -> None:
        items = self.rules.items() if isinstance(self.rules, Mapping) else self.rules
        rules = []
        for pattern, rule in items:
            if not isinstance(pattern, str) or not pattern:
                raise TypeError(f"a channel rule's pattern must be a non-empty string, got {pattern!r}")
            if isinstance(rule, Mapping):
                rule = ChannelConstraint(**rule)
            if rule is not None and not isinstance(rule, ChannelConstraint):
                raise TypeError(f"channel rule {pattern!r} must map to a ChannelConstraint, a dict of its fields "
                                f"or None (keep the group whole), got {type(rule).__name__}")
            if rule is not None and rule.rules:
                raise ValueError(f"channel rule {pattern!r}: a rule's constraint cannot have rules of its own")
            rules.append((pattern, rule))
        object.__setattr__(self, "rules", tuple(rules))

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

    def matching_rules(self, group: Group) -> list[str]:
        """The patterns of ``rules`` that match ``group``, in order."""
        owners = {m.fqn.rpartition(".")[0] for m in group.members if m.role != "in"}
        names = (group.name, *group.tags, *owners)
        return [p for p, _ in self.rules if any(fnmatchcase(n, p) for n in names)]

    def for_group(self, group: Group) -> ChannelConstraint | None:
        """The constraint that applies to ``group``: the last matching rule's (``None``: keep the
        group whole), or this one without its rules when none matches."""
        if not self.rules:
            return self
        matched = set(self.matching_rules(group))
        chosen: Any = self
        for pattern, rule in self.rules:
            if pattern in matched:
                chosen = rule
        if chosen is None:
            return None
        if chosen is self:
            return dataclasses.replace(self, rules=())
        return chosen if chosen.step is not None else dataclasses.replace(chosen, step=self.step)


def unmatched_rules(groups: list[Group], constraint: ChannelConstraint | None) -> list[str]:
    """Patterns of ``constraint.rules`` that match none of ``groups`` (a typo, or a module name
    that is not a group's: see ``prunepass inspect``)."""
    if constraint is None or not constraint.rules:
        return []
    hit = {p for g in groups for p in constraint.matching_rules(g)}
    return [p for p, _ in constraint.rules if p not in hit]


def warn_unmatched_rules(groups: list[Group], constraint: ChannelConstraint | None, stacklevel: int = 2) -> None:
    """Warn about rules that match none of ``groups`` (``stacklevel`` as for ``warnings.warn``,
    counted from the caller)."""
    unmatched = unmatched_rules(groups, constraint)
    if unmatched:
        warnings.warn(f"channel rules {unmatched} match no prunable group (a pattern matches a group's name, a "
                      "tag or a module whose outputs the group is: see `prunepass inspect`)", stacklevel=stacklevel + 1)


def allowed_widths(group: Group, constraint: ChannelConstraint | None = None) -> list[int]:
    """Ascending list of widths the group may be pruned to (always includes its full size;
    only its full size when a rule keeps it whole)."""
    c = (constraint or ChannelConstraint()).for_group(group)
    if c is None:
        return [group.size]
    low, step = c.min_for(group), c.step_for(group)
    widths = [w for w in range(step, group.size + 1, step) if w >= low]
    if not widths or widths[-1] != group.size:
        widths.append(group.size)
    if low not in widths and low % step == 0:
        widths.insert(0, low)
    return sorted(set(widths))


def uniform_widths(groups: list[Group], constraint: ChannelConstraint | None, channels: int) -> dict[str, int]:
    """Every channel group at the smallest allowed width of at least ``channels`` (its full size
    when it has fewer), every head-count group at its fewest heads: the uniform networks at the
    floor of a search space, for probing which channel counts run fast."""
    out = {}
    for g in groups:
        allowed = allowed_widths(g, constraint)
        least = allowed[0] if "heads" in g.tags else min(channels, g.size)
        out[g.name] = next(w for w in allowed if w >= least)
    return out


def nearest_allowed(group: Group, width: float, constraint: ChannelConstraint | None = None) -> int:
    """The allowed width closest to ``width`` (ties towards the larger)."""
    options = allowed_widths(group, constraint)
    return min(options, key=lambda w: (abs(w - width), -w))
