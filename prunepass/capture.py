"""Capture: ``torch.export`` of ``model.forward`` or any ``entry_point`` method.

Example inputs follow the three ``dummy_input`` conventions of the reference products:

* a single argument: ``x`` (anything that is not a tuple) is passed as ``f(x)``;
* a tuple of positional arguments: ``(x, y)`` is passed as ``f(x, y)``;
* a tuple whose last element is a dict: ``(x, {"mask": m})`` is passed as ``f(x, mask=m)``.
  To pass a dict as the only positional argument, write ``(d, {})``.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from prunepass.errors import CaptureError, EntryPointError, InputStructureError

log = logging.getLogger(__name__)

WRAPPER_PREFIX = "root."


@dataclass(frozen=True)
class GraphInput:
    """What one placeholder of the exported graph stands for."""

    name: str  # placeholder node name
    kind: str  # "parameter" | "buffer" | "constant" | "input" | "other"
    target: str | None  # FQN in the user's model (parameters, buffers), or the input's name


@dataclass(frozen=True)
class Captured:
    """An exported program plus what is needed to map it back onto the eager model."""

    program: ExportedProgram
    model: nn.Module
    entry_point: str
    args: tuple
    kwargs: dict
    inputs: dict[str, GraphInput]
    export_seconds: float
    warnings: tuple[str, ...] = field(default=())
    #: placeholder -> earlier placeholder holding the same tensor (tied weights)
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def module_prefix(self) -> str:
        """Prefix of module paths inside the program (``root.`` when a non-forward entry point
        was captured through the wrapper module), empty otherwise."""
        return WRAPPER_PREFIX if self.entry_point != "forward" else ""

    def fqn(self, placeholder: str) -> str | None:
        gi = self.inputs.get(placeholder)
        return gi.target if gi is not None and gi.kind in ("parameter", "buffer") else None


def split_inputs(dummy_input: Any) -> tuple[tuple, dict]:
    """Apply the ``dummy_input`` conventions: return ``(args, kwargs)``."""
    if isinstance(dummy_input, list):
        raise InputStructureError(
            "example inputs are a list; pass a tuple of positional arguments instead "
            "(a list is ambiguous: it could be one list-valued argument). "
            "Write (x, y) for two arguments or (my_list,) for one list argument."
        )
    if not isinstance(dummy_input, tuple):
        return (dummy_input,), {}
    if dummy_input and isinstance(dummy_input[-1], dict):
        kwargs = dummy_input[-1]
        bad = [k for k in kwargs if not isinstance(k, str)]
        if bad:
            raise InputStructureError(f"keyword-argument dict has non-string keys {bad!r}")
        return tuple(dummy_input[:-1]), dict(kwargs)
    return tuple(dummy_input), {}


def resolve_entry_point(model: nn.Module, entry_point: str) -> tuple[str, str, Any]:
    """Split ``"a.b.method"`` into submodule path and method name, and return the bound method."""
    if not isinstance(entry_point, str) or not entry_point:
        raise EntryPointError(f"entry_point must be a non-empty string like 'forward', got {entry_point!r}")
    sub_path, _, method = entry_point.rpartition(".")
    try:
        owner = model.get_submodule(sub_path) if sub_path else model
    except AttributeError as exc:
        children = [n for n, _ in model.named_children()]
        raise EntryPointError(
            f"entry_point {entry_point!r}: model has no submodule {sub_path!r} ({exc}). "
            f"Top-level submodules are: {children}. Write the path as 'submodule.method', "
            "e.g. 'backbone.forward_features'."
        ) from None
    fn = getattr(owner, method, None)
    if fn is None or not callable(fn):
        methods = sorted(
            n for n in dir(type(owner)) if not n.startswith("_") and callable(getattr(type(owner), n, None))
        )
        hint = [m for m in methods if m.startswith(("forward", "predict", "encode", "extract"))] or methods[:10]
        raise EntryPointError(
            f"entry_point {entry_point!r}: {type(owner).__name__} has no method {method!r}. "
            f"Candidates: {hint}."
        )
    return sub_path, method, fn


class _EntryWrapper(nn.Module):
    """Makes a non-forward method exportable; parameter FQNs get the prefix ``root.``."""

    def __init__(self, root: nn.Module, sub_path: str, method: str) -> None:
        super().__init__()
        self.root = root
        self._sub_path = sub_path
        self._method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        owner = self.root.get_submodule(self._sub_path) if self._sub_path else self.root
        return getattr(owner, self._method)(*args, **kwargs)


_KINDS = {
    InputKind.PARAMETER: "parameter",
    InputKind.BUFFER: "buffer",
    InputKind.CONSTANT_TENSOR: "constant",
    InputKind.USER_INPUT: "input",
}


def capture(
    model: nn.Module,
    dummy_input: Any,
    entry_point: str = "forward",
    *,
    strict: bool = False,
) -> Captured:
    """Export ``model``'s ``entry_point`` on ``dummy_input`` and map graph inputs to FQNs."""
    if not isinstance(model, nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = split_inputs(dummy_input)
    sub_path, method, fn = resolve_entry_point(model, entry_point)
    _check_signature(fn, args, kwargs, entry_point)
    target: nn.Module = model if entry_point == "forward" else _EntryWrapper(model, sub_path, method)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(target, args, kwargs, strict=strict)
    except Exception as exc:  # noqa: BLE001 - any export failure becomes a CaptureError with advice
        raise CaptureError(_explain_export_failure(exc, entry_point, strict)) from exc
    seconds = time.perf_counter() - t0
    inputs: dict[str, GraphInput] = {}
    prefix = WRAPPER_PREFIX if target is not model else ""
    for spec in program.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        if name is None:
            continue
        kind = _KINDS.get(spec.kind, "other")
        tgt = spec.target
        if tgt is not None and prefix and tgt.startswith(prefix):
            tgt = tgt[len(prefix):]
        inputs[name] = GraphInput(name=name, kind=kind, target=tgt if kind != "input" else name)
    log.debug("captured %s in %.3fs (%d graph inputs)", entry_point, seconds, len(inputs))
    return Captured(program, model, entry_point, args, kwargs, inputs, seconds, aliases=_aliases(model, inputs))


def _aliases(model: nn.Module, inputs: dict[str, GraphInput]) -> dict[str, str]:
    """Placeholders whose tensors are the same object as an earlier placeholder's (tied weights)."""
    ids = {name: id(t) for name, t in model.named_parameters(remove_duplicate=False)}
    ids |= {name: id(t) for name, t in model.named_buffers(remove_duplicate=False)}
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, gi in inputs.items():
        if gi.kind not in ("parameter", "buffer") or gi.target not in ids:
            continue
        key = ids[gi.target]
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def _check_signature(fn: Any, args: tuple, kwargs: dict, entry_point: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise InputStructureError(
            f"example inputs do not fit {entry_point}{sig}: {exc}. Conventions: a single "
            "argument x; a tuple (x, y) of positional arguments; or a tuple whose last "
            "element is a dict of keyword arguments, (x, {'mask': m})."
        ) from None


def _explain_export_failure(exc: Exception, entry_point: str, strict: bool) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = "\n".join(text.splitlines()[:6])
    hints = []
    low = text.lower()
    if "data-dependent" in low or "guard" in low or "could not guard" in low:
        hints.append(
            "the method branches on tensor values; rewrite the branch with torch.cond or "
            "torch.where, or choose an entry_point that avoids it"
        )
    if "unsupported" in low or "not supported" in low:
        hints.append("an operation is not supported by torch.export; see the message above")
    if not strict:
        hints.append("try strict=True capture, which traces Python differently")
    hints.append("check that the method runs eagerly on the same example inputs")
    return f"torch.export could not capture '{entry_point}': {first}\nWhat to try: " + "; ".join(hints) + "."
