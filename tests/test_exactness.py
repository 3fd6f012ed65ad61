"""Exactness over the zoo: channels whose contribution is zero can be removed without changing
the outputs of the eager module, the exported program and the ONNX model."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

import models
from prunepass import analyze
from prunepass.analysis import Analysis
from prunepass.onnx_backend import export_onnx, run_onnx
from prunepass.plan import Plan
from prunepass.rewrite import apply_plan, prune_program

# outputs flow through many layers: fp32 round-off grows a little with depth
ATOL, RTOL = 1e-4, 1e-3


def exact_groups(a: Analysis) -> list:
    return [g for g in a.prunable_groups if not g.is_approximate and any(m.role == "in" for m in g.members)]


def random_plan(a: Analysis, groups: list, seed: int) -> Plan:
    rng = random.Random(seed)
    keep = {g.name: sorted(rng.sample(range(g.size), rng.randint(1, g.size - 1))) for g in groups}
    return Plan.from_keep(a, keep)


def zero_consumers(model: torch.nn.Module, a: Analysis, plan: Plan) -> torch.nn.Module:
    """Zero the input-side slices (members with role 'in') of every removed channel."""
    zeroed = copy.deepcopy(model)
    params = dict(zeroed.named_parameters(remove_duplicate=False))
    keep = {n: list(k) for n, k in plan.keep.items()}
    with torch.no_grad():
        for name in plan.keep:
            for m in a.group(name).members:
                if m.role != "in":
                    continue
                t = params[m.fqn]
                kept = set(a.kept_indices(m.fqn, m.axis, {name: keep[name]}))
                removed = [i for i in range(t.shape[m.axis]) if i not in kept]
                t.index_fill_(m.axis, torch.tensor(removed, dtype=torch.long), 0.0)
    return zeroed


def outputs(fn, args, kwargs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = fn(*args, **kwargs)
    return [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", models.names())
def test_removing_zero_contribution_channels_is_exact(name):
    model, inputs = models.get(name)
    args, kwargs = models.split_inputs(inputs)
    a = analyze(model, inputs)
    groups = exact_groups(a)
    assert groups, f"{name} has no exactly-prunable group"
    plan = random_plan(a, groups, seed=len(name))
    zeroed = zero_consumers(model, a, plan)
    expected = outputs(zeroed, args, kwargs)

    pruned = apply_plan(zeroed, a, plan)
    for got, ref in zip(outputs(pruned, args, kwargs), expected, strict=True):
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
    program = prune_program(a, plan, model=zeroed)
    for got, ref in zip(outputs(program.module(), args, kwargs), expected, strict=True):
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
    proto = export_onnx(pruned, args, kwargs, verify=False)
    for got, ref in zip(run_onnx(proto, args, kwargs), expected, strict=True):
        np.testing.assert_allclose(got, ref.numpy(), atol=ATOL, rtol=RTOL)
    # the pruned module is really smaller
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet", "vit", "llama", "shufflenet_v2"])
def test_each_group_alone_is_exact(name):
    model, inputs = models.get(name)
    args, kwargs = models.split_inputs(inputs)
    a = analyze(model, inputs)
    for k, g in enumerate(exact_groups(a)):
        plan = random_plan(a, [g], seed=k)
        zeroed = zero_consumers(model, a, plan)
        expected = outputs(zeroed, args, kwargs)
        got = outputs(apply_plan(zeroed, a, plan, verify=False), args, kwargs)
        for x, y in zip(got, expected, strict=True):
            torch.testing.assert_close(x, y, atol=ATOL, rtol=RTOL, msg=f"group {g.name}")


def test_approximate_groups_run_and_shrink():
    model, inputs = models.get("convnext")
    args, kwargs = models.split_inputs(inputs)
    a = analyze(model, inputs)
    approx = [g for g in a.prunable_groups if g.is_approximate]
    assert approx
    plan = random_plan(a, approx, seed=0)
    pruned = apply_plan(model, a, plan)
    out = outputs(pruned, args, kwargs)
    assert [t.shape for t in out] == [t.shape for t in outputs(model, args, kwargs)]
    assert all(torch.isfinite(t).all() for t in out)
