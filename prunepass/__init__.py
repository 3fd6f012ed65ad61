"""prunepass: structured pruning of PyTorch models as a compiler pass.

Public API only (re-exports).  See README.md for a tour.
"""

from prunepass.analysis import Analysis, analyze, analyze_captured
from prunepass.capture import Captured, capture, split_inputs
from prunepass.errors import (
    CaptureError,
    EntryPointError,
    InputStructureError,
    LatencyMeasurementError,
    PlanError,
    PrunepassError,
    RewriteError,
    RuleRegistrationError,
    TargetNotMetError,
    UnsupportedOpError,
)
from prunepass.ir import Group, Member
from prunepass.rules import Registry, RuleContext, Unsupported, default_registry

__version__ = "0.1.0"

__all__ = [
    "Analysis", "CaptureError", "Captured", "EntryPointError", "Group", "InputStructureError",
    "LatencyMeasurementError", "Member", "PlanError", "PrunepassError", "Registry", "RewriteError",
    "RuleContext", "RuleRegistrationError", "TargetNotMetError", "Unsupported", "UnsupportedOpError",
    "analyze", "analyze_captured", "capture", "default_registry", "split_inputs",
]
