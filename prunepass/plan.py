"""Pruning plans: which channels of which groups survive.  Serialisable and re-applicable to a
fresh instance of the same architecture (checked by a structural fingerprint)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunepass.analysis import Analysis
from prunepass.errors import PlanError

PLAN_VERSION = 1


def fingerprint(analysis: Analysis) -> str:
    """Hash of the group structure (names, sizes, members): equal for equal architectures."""
    h = hashlib.sha256()
    for g in analysis.groups:
        h.update(f"{g.name}:{g.size}:{g.prunable}".encode())
        for m in g.members:
            h.update(f"{m.fqn}[{m.axis}]={m.layout};".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """Group name -> kept channel indices (ascending).  Groups not listed are kept whole."""

    keep: dict[str, tuple[int, ...]]
    sizes: dict[str, int]  # original size of every listed group
    fingerprint: str
    entry_point: str = "forward"
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_keep(cls, analysis: Analysis, keep: dict[str, Any], **meta: Any) -> Plan:
        norm: dict[str, tuple[int, ...]] = {}
        sizes: dict[str, int] = {}
        for name, idx in keep.items():
            g = analysis.group(name)
            kept = tuple(sorted({int(i) for i in idx}))
            if len(kept) == g.size:
                continue
            norm[name] = kept
            sizes[name] = g.size
        plan = cls(norm, sizes, fingerprint(analysis), analysis.captured.entry_point, dict(meta))
        plan.validate(analysis)
        return plan

    @classmethod
    def from_prune_labels(cls, analysis: Analysis, labels: list[int], **meta: Any) -> Plan:
        """The reference product's form: global channel labels to remove."""
        removed: dict[str, set[int]] = {}
        for label in labels:
            g, i = analysis.group_of_label(int(getattr(label, "label", label)))
            if not g.prunable:
                raise PlanError(f"label {label} belongs to unprunable group {g.name}: {g.reasons[0]}")
            removed.setdefault(g.name, set()).add(i)
        keep = {name: [i for i in range(analysis.group(name).size) if i not in r] for name, r in removed.items()}
        return cls.from_keep(analysis, keep, **meta)

    @classmethod
    def from_widths(cls, analysis: Analysis, widths: dict[str, int], scores: dict[str, Any] | None = None,
                    **meta: Any) -> Plan:
        """Keep ``widths[name]`` channels of each group: the highest-scoring ones if scores are
        given, else the first ones."""
        keep = {}
        for name, w in widths.items():
            size = analysis.group(name).size
            if scores is not None and name in scores:
                order = sorted(range(size), key=lambda i: -float(scores[name][i]))
                keep[name] = sorted(order[:w])
            else:
                keep[name] = list(range(w))
        return cls.from_keep(analysis, keep, **meta)

    # ------------------------------------------------------------------ checks
    def validate(self, analysis: Analysis) -> None:
        if self.fingerprint != fingerprint(analysis):
            raise PlanError(
                "this plan was made for a different architecture (group fingerprint differs); "
                "re-create it with the model it will be applied to"
            )
        for name, kept in self.keep.items():
            try:
                g = analysis.group(name)
            except KeyError:
                raise PlanError(f"plan names unknown group {name!r}") from None
            if not g.prunable:
                raise PlanError(f"group {name} is not prunable: {g.reasons[0]}")
            if not kept:
                raise PlanError(f"group {name} would keep no channel; keep at least one")
            if kept[0] < 0 or kept[-1] >= g.size:
                raise PlanError(f"group {name}: kept indices must lie in 0..{g.size - 1}")

    def widths(self, analysis: Analysis) -> dict[str, int]:
        """New width of every group (unlisted groups keep their size)."""
        return {g.name: len(self.keep[g.name]) if g.name in self.keep else g.size for g in analysis.groups}

    def prune_labels(self, analysis: Analysis) -> list[int]:
        out = []
        for name, kept in self.keep.items():
            g = analysis.group(name)
            ks = set(kept)
            out += [g.labels[0] + i for i in range(g.size) if i not in ks]
        return sorted(out)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "fingerprint": self.fingerprint, "entry_point": self.entry_point,
                "groups": {n: {"size": self.sizes[n], "keep": list(k)} for n, k in self.keep.items()},
                "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if d.get("version") != PLAN_VERSION:
            raise PlanError(f"unsupported plan version {d.get('version')!r} (expected {PLAN_VERSION})")
        groups = d["groups"]
        return cls({n: tuple(g["keep"]) for n, g in groups.items()}, {n: int(g["size"]) for n, g in groups.items()},
                   d["fingerprint"], d.get("entry_point", "forward"), dict(d.get("meta", {})))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_json(Path(path).read_text())
