"""Every zoo model pruned 50% uniformly: runs, leaves the original untouched, re-applies from
JSON onto a fresh instance, matches in onnxruntime and trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from prunepass import analyze
from prunepass.costs import CostModel, count_flops, count_params
from prunepass.onnx_backend import export_onnx, run_onnx
from prunepass.plan import Plan
from prunepass.rewrite import apply_plan
from prunepass.select import uniform_plan


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def flat(out) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", models.names())
def test_half_uniform(name, tmp_path):
    model, inputs = models.get(name)
    args, kwargs = models.split_inputs(inputs)
    before = snapshot(model)
    a = analyze(model, inputs)
    plan = uniform_plan(a, 0.5)
    assert plan.keep, "nothing pruned"
    pruned = apply_plan(model, a, plan, inplace=False)

    # the user's model is bit-for-bit untouched
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # costs: formulas agree with the pruned module, and it is smaller
    cm = CostModel(a)
    widths = plan.widths(a)
    assert cm.params(widths) == count_params(pruned) < count_params(model)
    assert cm.flops(widths) == count_flops(pruned, args, kwargs) < count_flops(model, args, kwargs)

    # plan JSON onto a fresh instance gives the same pruned network
    path = tmp_path / "plan.json"
    plan.save(path)
    fresh, _ = models.get(name)
    a2 = analyze(fresh, inputs)
    rebuilt = apply_plan(fresh, a2, Plan.load(path))
    with torch.no_grad():
        ref = flat(pruned(*args, **kwargs))
        for x, y in zip(flat(rebuilt(*args, **kwargs)), ref, strict=True):
            torch.testing.assert_close(x, y)
    # state_dict of the pruned module loads into the rebuilt architecture
    rebuilt.load_state_dict(pruned.state_dict())

    # ONNX of the pruned module matches it in onnxruntime
    proto = export_onnx(pruned, args, kwargs, verify=False)
    for got, want in zip(run_onnx(proto, args, kwargs), ref, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-3)

    # one training step runs and changes the weights
    pruned.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    w0 = snapshot(pruned)
    loss = sum(t.float().pow(2).mean() for t in flat(pruned(*args, **kwargs)))
    loss.backward()
    opt.step()
    assert any(not torch.equal(w0[k], v) for k, v in pruned.state_dict().items() if v.is_floating_point())
