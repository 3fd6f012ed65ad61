"""Typed errors raised by prunepass. Every message says what went wrong and what to try."""

from __future__ import annotations


class PrunepassError(Exception):
    """Base class of every error prunepass raises on purpose."""


class CaptureError(PrunepassError):
    """The model (or the chosen entry point) could not be captured with ``torch.export``."""


class InputStructureError(CaptureError):
    """The example inputs do not follow one of the accepted ``dummy_input`` conventions."""


class EntryPointError(CaptureError):
    """The ``entry_point`` path does not name a callable method of the model."""


class RuleRegistrationError(PrunepassError):
    """A rule was registered twice for the same aten overload, or registered badly."""


class UnsupportedOpError(PrunepassError):
    """Raised only in strict analysis mode when an op that touches channels has no rule."""


class PlanError(PrunepassError):
    """A pruning plan does not fit the analysed model (unknown group, bad indices...)."""


class RewriteError(PrunepassError):
    """Applying a plan to the eager module or the exported program failed."""


class LatencyMeasurementError(PrunepassError):
    """onnxruntime latency could not be measured."""


class TargetNotMetError(PrunepassError):
    """A strict constraint (ratio, FLOPs, params, latency) cannot be satisfied."""
