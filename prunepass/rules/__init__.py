"""The per-op rule table.  ``default_registry()`` returns a fresh registry holding every
built-in family; pass it (or your extended copy) to the analysis."""

from __future__ import annotations

from prunepass.rules import attention, layout, parametric, pointwise
from prunepass.rules.base import Registry, RuleContext, Unsupported


def default_registry() -> Registry:
    reg = Registry()
    for family in (pointwise, parametric, layout, attention):
        family.register(reg)
    return reg


__all__ = ["Registry", "RuleContext", "Unsupported", "default_registry"]
