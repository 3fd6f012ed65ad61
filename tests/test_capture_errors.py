"""Capture conventions and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunepass import (
    CaptureError,
    EntryPointError,
    InputStructureError,
    Registry,
    RuleRegistrationError,
    analyze,
    capture,
    default_registry,
    split_inputs,
)


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, scale: float = 1.0, *, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = self.backbone.forward_features(x).mean((2, 3))
        y = self.head(y) * scale
        return y if bias is None else y + bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).softmax(-1)


def x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8)


def test_split_inputs_conventions():
    t = x()
    assert split_inputs(t) == ((t,), {})
    args, kwargs = split_inputs((t, 2.0))
    assert args == (t, 2.0) and kwargs == {}
    args, kwargs = split_inputs((t, {"bias": t}))
    assert args == (t,) and list(kwargs) == ["bias"]
    d = {"a": t}
    assert split_inputs((d, {})) == ((d,), {})


def test_three_conventions_capture_and_map_fqns():
    model = Net().eval()
    for inputs in (x(), (x(), 2.0), (x(), {"bias": torch.randn(4)})):
        cap = capture(model, inputs)
        fqns = {gi.target for gi in cap.inputs.values() if gi.kind == "parameter"}
        assert fqns == {n for n, _ in model.named_parameters()}


def test_entry_point_submodule_method_keeps_fqns():
    model = Net().eval()
    a = analyze(model, x(), entry_point="backbone.forward_features")
    fqns = {m.fqn for g in a.groups for m in g.members}
    assert "backbone.conv.weight" in fqns and not any(f.startswith("root.") for f in fqns)
    assert not any(f.startswith("head.") for f in fqns)
    # conv -> conv2 channels are prunable; conv2's output is the graph output
    assert [m.fqn for m in a.prunable_groups[0].members][0] == "backbone.conv.weight"


def test_entry_point_other_method_of_root():
    a = analyze(Net().eval(), x(), entry_point="predict")
    assert any(g.prunable for g in a.groups)


@pytest.mark.parametrize("entry,match", [("backbone.nope", "has no method 'nope'"),
                                          ("neck.forward", "has no submodule 'neck'"),
                                          ("", "non-empty")])
def test_wrong_entry_point_is_clear(entry, match):
    with pytest.raises(EntryPointError, match=match):
        capture(Net().eval(), x(), entry_point=entry)


def test_inputs_of_wrong_structure():
    with pytest.raises(InputStructureError, match="do not fit"):
        capture(Net().eval(), (x(), 1.0, 2.0, 3.0))
    with pytest.raises(InputStructureError, match="unexpected keyword|do not fit"):
        capture(Net().eval(), (x(), {"nope": 1}))
    with pytest.raises(InputStructureError, match="list"):
        capture(Net().eval(), [x()])


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        y = self.conv(t)
        if y.sum() > 0:  # branches on a tensor value: not exportable
            return y * 2
        return y


def test_non_exportable_model_gives_capture_error_with_advice():
    with pytest.raises(CaptureError) as info:
        capture(DataDependent().eval(), x())
    text = str(info.value)
    assert "torch.export could not capture 'forward'" in text
    assert "What to try" in text and "torch.cond" in text


def test_not_a_module():
    with pytest.raises(CaptureError, match="nn.Module"):
        capture(lambda t: t, x())  # type: ignore[arg-type]


def test_registry_refuses_double_registration():
    reg = default_registry()
    with pytest.raises(RuleRegistrationError, match="already registered"):
        reg.add(torch.ops.aten.relu.default, lambda ctx, node: None)
    fresh = Registry()
    fresh.add(torch.ops.aten.relu.default, lambda ctx, node: None)
    assert torch.ops.aten.relu.default in fresh and len(fresh) == 1
