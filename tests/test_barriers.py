"""Unknown ops and failed self-checks become barriers with reasons, never wrong groups."""

from __future__ import annotations

import torch
from torch import nn

from prunepass import analyze, default_registry


class CumsumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cumsum(self.a(x), dim=1)  # mixes channels by position: no rule
        return self.c(torch.relu(self.b(y)))


def test_unknown_op_is_a_barrier_with_reason():
    a = analyze(CumsumNet().eval(), torch.randn(1, 3, 4, 4))
    assert any("cumsum" in b.op for b in a.barriers)
    g = next(g for g in a.groups if any(m.fqn == "a.weight" and m.axis == 0 for m in g.members))
    assert not g.prunable
    assert any("no rule for aten.cumsum" in r for r in g.reasons)
    assert "Registry.register(torch.ops.aten.cumsum" in g.reasons[0]
    # b -> c is untouched by the barrier and stays prunable
    g_b = next(g for g in a.groups if any(m.fqn == "b.weight" and m.axis == 0 for m in g.members))
    assert g_b.prunable
    assert "barriers:" in a.dump() and "cumsum" in a.dump()


def test_wrong_rule_is_caught_by_self_check():
    reg = default_registry()

    def bad_relu(ctx, node):  # claims relu drops the last dim
        return ctx.need(node.args[0], "input")[:-1]

    reg.replace(torch.ops.aten.relu.default, bad_relu)
    a = analyze(CumsumNet().eval(), torch.randn(1, 3, 4, 4), registry=reg)
    assert any("self-check failed" in b.reason for b in a.barriers)
    g_b = next(g for g in a.groups if any(m.fqn == "b.weight" and m.axis == 0 for m in g.members))
    assert not g_b.prunable and any("self-check" in r for r in g_b.reasons)


class ApproxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(self.ln(self.fc1(x)))))


def test_layer_norm_group_is_approximate_and_others_exact():
    a = analyze(ApproxNet().eval(), torch.randn(2, 8))
    g_ln = next(g for g in a.groups if any(m.fqn == "ln.weight" for m in g.members))
    g_fc2 = next(g for g in a.groups if any(m.fqn == "fc2.weight" and m.axis == 0 for m in g.members))
    assert g_ln.prunable and g_ln.is_approximate
    assert g_fc2.prunable and not g_fc2.is_approximate
    roles = {(m.fqn, m.axis): m.role for m in g_ln.members}
    assert roles[("fc1.weight", 0)] == "out" and roles[("fc2.weight", 1)] == "in"
    assert roles[("ln.weight", 0)] == "affine"


class PositionTable(nn.Module):
    """A buffer cut to the input's length, as BERT cuts ``position_ids`` to the sequence length."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pos", torch.arange(64, dtype=torch.float32)[None])
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) + self.pos[:, : x.shape[1], None]


def test_rows_of_a_buffer_past_the_traced_length_are_not_prunable():
    """The rows of the table past the traced length touch no weight; pruning them would save
    nothing and leave a model that fails (or misreads) longer inputs."""
    a = analyze(PositionTable().eval(), torch.randn(2, 10, 16))
    rest = next(g for g in a.groups if g.size == 54)
    assert {m.fqn for m in rest.members} == {"pos"}
    assert not rest.prunable and "only buffers carry these channels" in rest.reasons[0]
    assert any(m.fqn == "a.weight" for g in a.prunable_groups for m in g.members)  # the hidden layer
