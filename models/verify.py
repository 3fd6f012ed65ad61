"""Check every zoo model runs eagerly and exports with torch.export; print timings.

Run with ``python -m models.verify [name ...]``.  Exits non-zero on any failure.
"""

from __future__ import annotations

import logging
import sys
import time

import torch
from torch.utils._pytree import tree_flatten

from . import get, names, split_inputs

log = logging.getLogger(__name__)


def check(name: str) -> tuple[float, int]:
    """Export ``name``; assert exported output equals eager output. Returns (export seconds, params)."""
    model, inputs = get(name)
    args, kwargs = split_inputs(inputs)
    with torch.no_grad():
        eager = model(*args, **kwargs)
    t0 = time.perf_counter()
    ep = torch.export.export(model, args, kwargs, strict=False)
    dt = time.perf_counter() - t0
    with torch.no_grad():
        exported = ep.module()(*args, **kwargs)
    flat_e, spec_e = tree_flatten(eager)
    flat_x, spec_x = tree_flatten(exported)
    assert spec_e == spec_x, f"{name}: output structure differs"
    for a, b in zip(flat_e, flat_x, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    n_params = sum(p.numel() for p in model.parameters())  # tied params counted once
    return dt, n_params


def main(argv: list[str]) -> int:
    """Check the given names (default: all); print a table and the total export time."""
    selected = argv or names()
    # Untimed warm-up export so one-off tracing/import costs don't land on the first model.
    check("digits_cnn")
    total = 0.0
    failed: list[str] = []
    print(f"{'model':<15} {'export_s':>9} {'params':>10}")
    for name in selected:
        try:
            dt, n = check(name)
        except Exception:  # report every failure, keep going
            failed.append(name)
            log.exception("%s: FAILED", name)
            continue
        total += dt
        print(f"{name:<15} {dt:9.3f} {n:10,d}")
    print(f"total export time: {total:.2f} s")
    if failed:
        print("failed:", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
