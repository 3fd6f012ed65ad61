"""Plans (labels, JSON, validation), hard-coded sizes in eager code, program rewrite, costs."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import models
from prunepass import PlanError, RewriteError, analyze
from prunepass.costs import CostModel, count_flops, count_params
from prunepass.plan import Plan
from prunepass.rewrite import apply_plan, prune_program


class HardCoded(nn.Module):
    """Attention written with literal head sizes: the eager module cannot follow a head prune."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)
        self.proj = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 4, 8).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, t, 32))


def test_hard_coded_sizes_are_reported_with_line_and_program_works():
    model = HardCoded().eval()
    x = torch.randn(2, 5, 32)
    a = analyze(model, x)
    heads = next(g for g in a.prunable_groups if "heads" in g.tags)
    plan = Plan.from_keep(a, {heads.name: [0, 2]})
    with pytest.raises(RewriteError) as info:
        apply_plan(model, a, plan)
    text = str(info.value)
    assert "test_plan_rewrite.py" in text and "view(b, t, 3, 4, 8)" in text
    assert "prune_program" in text
    # in place, a failed check leaves the given model as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RewriteError):
        apply_plan(model, a, plan, inplace=True)
    assert model.qkv.out_features == 96
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    program = prune_program(a, plan)
    out = program.module()(x)
    assert out.shape == (2, 5, 32)
    # the program really has 2 heads: its qkv weight has 3 * 2 * 8 rows
    assert program.state_dict["qkv.weight"].shape == (48, 32)


def test_labels_round_trip_and_validation():
    model, inputs = models.get("resnet18")
    a = analyze(model, inputs)
    g = a.prunable_groups[2]
    labels = [g.labels[0] + i for i in (1, 3, 5)]
    plan = Plan.from_prune_labels(a, labels)
    assert plan.prune_labels(a) == labels
    assert plan.keep[g.name] == tuple(i for i in range(g.size) if i not in (1, 3, 5))
    assert Plan.from_json(plan.to_json()) == plan
    u = a.unprunable_groups[0]
    with pytest.raises(PlanError, match="unprunable"):
        Plan.from_prune_labels(a, [u.labels[0]])
    with pytest.raises(PlanError, match="keep no channel"):
        Plan.from_keep(a, {g.name: []})
    with pytest.raises(PlanError, match="0.."):
        Plan.from_keep(a, {g.name: [g.size + 3]})
    other, other_inputs = models.get("resnet50")
    with pytest.raises(PlanError, match="different architecture"):
        apply_plan(other, analyze(other, other_inputs), plan)


def test_inplace_edits_given_model():
    model, inputs = models.get("digits_cnn")
    a = analyze(model, inputs)
    g = a.prunable_groups[0]
    plan = Plan.from_keep(a, {g.name: list(range(g.size // 2))})
    out = apply_plan(model, a, plan, inplace=True)
    assert out is model
    assert model.features[0].out_channels == g.size // 2 == model.features[0].weight.shape[0]


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3", "densenet", "unet", "llama", "bert", "yolo_csp"])
def test_cost_formulas_match_counts_for_random_plans(name):
    model, inputs = models.get(name)
    args, kwargs = models.split_inputs(inputs)
    a = analyze(model, inputs)
    cm = CostModel(a)
    assert cm.params() == count_params(model)
    assert cm.flops() == count_flops(model, args, kwargs)
    rng = random.Random(7)
    for _ in range(2):
        keep = {g.name: sorted(rng.sample(range(g.size), rng.randint(1, g.size))) for g in a.prunable_groups}
        plan = Plan.from_keep(a, keep)
        pruned = apply_plan(model, a, plan)
        widths = plan.widths(a)
        assert cm.params(widths) == count_params(pruned)
        assert cm.flops(widths) == count_flops(pruned, args, kwargs)


def test_entry_point_prune_checks_against_program():
    from tests.test_capture_errors import Net

    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    a = analyze(model, x, entry_point="backbone.forward_features")
    g = a.prunable_groups[0]
    plan = Plan.from_keep(a, {g.name: [0, 1, 2]})
    pruned = apply_plan(model, a, plan)  # verify=True compares with the pruned program
    assert pruned.backbone.conv.out_channels == 3
    prog = prune_program(a, plan, model=model)
    torch.testing.assert_close(prog.module()(x), pruned.backbone.forward_features(x))
