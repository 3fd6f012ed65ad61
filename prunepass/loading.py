"""Resolve a MODEL argument: a ``models/`` name, ``package.module:factory`` or a ``.pt2`` file."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunepass.errors import CaptureError


def load_model(spec: str, input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, Any]:
    """Return ``(model, example_inputs)``.

    * a name from the built-in zoo (``resnet18``, ``vit``...; ``prunepass inspect --list``);
    * ``package.module:factory`` — the factory returns ``(model, example_inputs)`` or a model,
      in which case ``input_shape`` gives a random float input;
    * ``path/to/program.pt2`` — a saved ``torch.export`` program (its example inputs are used).
    """
    if spec.endswith(".pt2"):
        return _load_pt2(Path(spec))
    if ":" in spec:
        return _load_factory(spec, input_shape)
    import models

    try:
        model, inputs = models.get(spec)
    except KeyError:
        raise CaptureError(
            f"unknown model {spec!r}: give a built-in name ({', '.join(models.names())}), "
            "'package.module:factory' or a .pt2 file"
        ) from None
    if input_shape is not None:
        inputs = (torch.randn(*input_shape),)
    return model, inputs


def _load_pt2(path: Path) -> tuple[nn.Module, Any]:
    if not path.exists():
        raise CaptureError(f"no such file: {path}")
    ep = torch.export.load(str(path))
    if ep.example_inputs is None:
        raise CaptureError(f"{path} holds no example inputs; re-save it from torch.export.export(...)")
    args, kwargs = ep.example_inputs
    return ep.module(), (tuple(args) + ((kwargs,) if kwargs else ()))


def _load_factory(spec: str, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, Any]:
    mod_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise CaptureError(f"cannot import {mod_name!r} for MODEL {spec!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise CaptureError(f"{mod_name!r} has no callable {attr!r}")
    made = factory()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        model, inputs = made
    elif isinstance(made, nn.Module):
        if input_shape is None:
            raise CaptureError(f"{spec} returned a model without example inputs: pass --input-shape, e.g. 1,3,224,224")
        model, inputs = made, (torch.randn(*input_shape),)
    else:
        raise CaptureError(f"{spec} must return a model or (model, example_inputs), got {type(made).__name__}")
    return model.eval(), inputs
