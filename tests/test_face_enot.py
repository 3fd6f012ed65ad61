"""ENOT-style face (prunepass.faces.enot) on the zoo's digits CNN: calibration context manager,
label selectors, channel constraints, high-level calls and inspection tables."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import models
from prunepass.costs import count_flops
from prunepass.faces import enot

N_PRUNABLE = 16 + 32 + 64 + 64  # g0..g3 of digits_cnn


def make_data(n_batches: int = 3, batch: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, 8, 8, generator=g) * 16.0, torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


def loss_function(output: torch.Tensor, sample: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(output, sample[1])


def macs(model: nn.Module) -> float:
    """Deterministic, cheap "latency": multiply-accumulates of digits_cnn's convs and linears."""
    f = model.features
    spatial = {0: 64, 3: 64, 7: 16}  # output pixels of each conv (8x8, 8x8, 4x4)
    total = sum(f[i].weight.numel() * hw for i, hw in spatial.items())
    return float(total + model.classifier[0].weight.numel() + model.classifier[2].weight.numel())


def widths(model: nn.Module) -> list[int]:
    f, c = model.features, model.classifier
    return [f[0].out_channels, f[3].out_channels, f[7].out_channels, c[0].out_features]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def digits():
    model, (x,) = models.get("digits_cnn")
    return model, x


@pytest.fixture(scope="module")
def info(digits):
    model, _ = digits
    return enot.calibrate_model_for_pruning(model, make_data(), loss_function)


# ---------------------------------------------------------------------- calibration
def test_calibrator_context_manager_and_no_side_effects(digits, info):
    model, x = digits
    model.classifier[2].bias.requires_grad_(False)  # a user-frozen parameter must stay frozen
    try:
        before_req = {n: p.requires_grad for n, p in model.named_parameters()}
        before_modes = {n: m.training for n, m in model.named_modules()}
        before_state = snapshot(model)
        data = make_data()
        calibrator = enot.PruningCalibrator(model=model)
        with calibrator:
            assert calibrator.pruning_info is None
            for sample in data:
                loss_function(model(sample[0]), sample).backward()
        pi = calibrator.pruning_info
        assert isinstance(pi, enot.ModelPruningInfo)
        assert [g.name for g in pi.prunable_groups] == ["g0", "g1", "g2", "g3"]
        assert [g.name for g in pi.unprunable_groups] == ["u4"]
        assert pi.prunable_labels == list(range(N_PRUNABLE))
        assert pi.unprunable_labels == list(range(N_PRUNABLE, N_PRUNABLE + 10))
        assert pi.prunable_labels[5].label == 5
        assert pi.group_of_label(20)[0].name == "g1" and pi.group_of_label(20)[1] == 4
        assert pi.scores.steps == len(data)
        assert all(pi.scores[g].shape == (s,) and pi.scores[g].sum() > 0
                   for g, s in zip(["g0", "g1", "g2", "g3"], [16, 32, 64, 64], strict=True))
        # the same data through calibrate_model_for_pruning gives the same Taylor scores
        for g in pi.scores.per_group:
            assert torch.allclose(torch.from_numpy(pi.scores[g]), torch.from_numpy(info.scores[g]), rtol=1e-6)
        # nothing left behind
        assert all(p.grad is None for p in model.parameters())
        assert {n: p.requires_grad for n, p in model.named_parameters()} == before_req
        assert {n: m.training for n, m in model.named_modules()} == before_modes
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
        assert same_state(before_state, model.state_dict())
    finally:
        model.classifier[2].bias.requires_grad_(True)


class _WithPredict(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("only predict is used")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_calibrator_non_forward_entry_point(digits):
    model = _WithPredict(copy.deepcopy(digits[0]))
    calibrator = enot.PruningCalibrator(model, entry_point="predict")
    with calibrator:
        assert "predict" in model.__dict__  # temporarily wrapped
        for sample in make_data(2):
            loss_function(model.predict(sample[0]), sample).backward()
    assert "predict" not in model.__dict__
    pi = calibrator.pruning_info
    assert pi is not None and pi.entry_point == "predict" and len(pi.prunable_groups) == 4
    pruned = enot.prune_model(model, pi, enot.UniformPruningLabelSelector(0.5).select(model, pi), inplace=False)
    assert widths(pruned.inner) == [8, 16, 32, 32]


def test_calibrator_without_backward_gives_none(digits):
    model, x = digits
    calibrator = enot.PruningCalibrator(model)
    with pytest.warns(UserWarning, match="no backward"), calibrator, torch.no_grad():
        model(x)
    assert calibrator.pruning_info is None
    assert all(not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------- selectors
def test_extract_labels_info(info):
    by_gates, scores = enot.PruningLabelSelector.extract_labels_info(info)
    assert [len(g) for g in by_gates] == [16, 32, 64, 64]
    assert sorted(lab for g in by_gates for lab in g) == list(range(N_PRUNABLE))
    for gate in by_gates:
        values = [scores[lab] for lab in gate]
        assert values == sorted(values)
    assert abs(sum(scores.values()) - 1.0) < 1e-5  # normalised by the total
    most = enot.PruningLabelSelector.get_most_important_labels(by_gates)
    assert most == {g[-1] for g in by_gates} and len(most) == 4
    _, raw = enot.PruningLabelSelector.extract_labels_info(info, normalize_score=False)
    assert all(raw[lab] == info.label_score(lab) for lab in (0, 17, 100, 175))
    assert raw[0] / sum(raw.values()) == pytest.approx(scores[0], rel=1e-5)
    unsorted, _ = enot.PruningLabelSelector.extract_labels_info(info, sort_labels=False)
    assert unsorted[1] == tuple(range(16, 48))


def test_uniform_selector_halves_channels(digits, info):
    model, x = digits
    labels = enot.UniformPruningLabelSelector(0.5).select(model, info)
    assert len(labels) == N_PRUNABLE // 2
    # the lowest-scoring half of every group goes
    by_gates, scores = enot.PruningLabelSelector.extract_labels_info(info)
    chosen = set(labels)
    for gate in by_gates:
        pruned = [scores[lab] for lab in gate if lab in chosen]
        kept = [scores[lab] for lab in gate if lab not in chosen]
        assert len(pruned) == len(gate) // 2 and max(pruned) <= min(kept)
    before = snapshot(model)
    pruned_model = enot.prune_model(model, info, labels, inplace=False)
    assert same_state(before, model.state_dict())
    assert widths(pruned_model) == [8, 16, 32, 32]
    assert pruned_model.features[3].in_channels == 8 and pruned_model.classifier[0].in_features == 32 * 4
    out = pruned_model(make_data(1)[0][0])
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    # in place: the given model itself is pruned and returned
    victim = copy.deepcopy(model)
    assert enot.prune_model(victim, info, labels) is victim and widths(victim) == [8, 16, 32, 32]


@pytest.mark.parametrize("amount,expected", [(50, 50), (0.25, 44)])
def test_global_selector_by_channels_exact_count(digits, info, amount, expected):
    model, x = digits
    labels = enot.GlobalPruningLabelSelectorByChannels(amount).select(model, info)
    assert len(labels) == len(set(labels)) == expected
    _, scores = enot.PruningLabelSelector.extract_labels_info(info)
    cut = max(scores[lab] for lab in labels)
    most = enot.PruningLabelSelector.get_most_important_labels(enot.PruningLabelSelector.extract_labels_info(info)[0])
    assert all(scores[lab] >= cut for lab in scores if lab not in set(labels) and lab not in most)
    pruned = enot.prune_model(model, info, labels, inplace=False)
    assert sum(widths(pruned)) == N_PRUNABLE - expected
    assert pruned(x).shape == (1, 10)


def test_default_channels_constraint_matches_reference_formula():
    def reference(n: int, absolute: int, relative: float, fixed: int | None) -> tuple[int, int, int]:
        high = max(absolute, int(relative * n))
        high = n - high
        high = max(0, high)
        step = (4 if n > 64 else 1) if fixed is None else fixed
        return 0, high, step

    for args in [(16, 0.25, None), (8, 0.5, None), (4, 0.1, 8)]:
        c = enot.DefaultChannelsSelectorConstraint(*args)
        for n in (3, 8, 16, 17, 32, 64, 65, 100, 256, 1000):
            assert c._get(n) == reference(n, *args), (args, n)
    c = enot.DefaultChannelsSelectorConstraint()
    assert c.get(10) == (0, 0, 1) and c.get(256) == (0, 192, 4)
    assert c.apply(190, 256) == 188 and c.apply(500, 256) == 192 and c.apply(3, 256) == 0
    d = enot.DummyChannelsSelectorConstraint()
    assert d.get(32) == (0, 31, 1) and d.apply(40, 32) == 31


# ---------------------------------------------------------------------- latency-driven selectors
def test_latency_function_is_a_flop_count(digits):
    model, x = digits
    assert 2 * macs(model) == count_flops(model, (x,))


def test_knapsack_selector_meets_target(digits, info):
    model, _ = digits
    target = 0.5 * macs(model)
    selector = enot.KnapsackPruningLabelSelector(target, macs, verbose=False)
    labels = selector.select(model, info)
    pruned = enot.prune_model(model, info, labels, inplace=False)
    assert macs(pruned) <= target
    assert macs(pruned) >= 0.8 * target  # it does not overshoot wildly either
    # the user's function is the measurement: no onnxruntime timing "as deployed" moves the answer
    assert not any(st["stage"].startswith(("settle", "neighbours")) for st in selector.report.stages)
    assert selector.report.achieved == macs(pruned)


def test_global_latency_selector_meets_target(digits, info):
    model, _ = digits
    target = 0.6 * macs(model)
    seen: list[tuple[float, float]] = []
    selector = enot.GlobalLatencyPruningLabelSelector(target, macs, selector_cb=lambda a, b: seen.append((a, b)))
    labels = selector.select(model, info)
    pruned = enot.prune_model(model, info, labels, inplace=False)
    assert macs(pruned) <= target
    assert seen and all(b == target for _, b in seen)
    # one label fewer would miss the target: the search stops at the threshold
    order = sorted(labels, key=lambda lab: enot.PruningLabelSelector.extract_labels_info(info)[1][lab])
    assert macs(enot.prune_model(model, info, order[:-1], inplace=False)) > target


def test_selectors_survive_latency_measurement_errors(digits, info):
    model, _ = digits
    target = 0.5 * macs(model)

    class Flaky:
        def __init__(self) -> None:
            self.calls = 0
            self.failures = 0

        def __call__(self, m: nn.Module) -> float:
            self.calls += 1
            if self.calls in (2, 3):  # the first two candidates cannot be measured
                self.failures += 1
                raise enot.LatencyMeasurementError("server busy")
            return macs(m)

    for make in (lambda f: enot.KnapsackPruningLabelSelector(target, f, verbose=False),
                 lambda f: enot.OptimalPruningLabelSelector(target, f, n_search_steps=12, seed=0, verbose=False),
                 lambda f: enot.GlobalLatencyPruningLabelSelector(target, f)):
        flaky = Flaky()
        labels = make(flaky).select(model, info)
        assert flaky.failures == 2
        assert macs(enot.prune_model(model, info, labels, inplace=False)) <= target


# ---------------------------------------------------------------------- high level
def test_calibrate_and_prune_model_equal_leaves_input_untouched(digits):
    model, x = digits
    before = snapshot(model)
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    data = make_data()
    pruned = enot.calibrate_and_prune_model_equal(model, data, loss_function, pruning_ratio=0.5)
    assert same_state(before, model.state_dict())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == req
    assert all(p.grad is None for p in model.parameters())
    assert pruned is not model and widths(model) == [16, 32, 64, 64]
    assert widths(pruned) == [8, 16, 32, 32]
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters()) / 2
    assert pruned(x).shape == (1, 10)
    # BatchNorm re-estimation changes the pruned model's statistics, not the input's
    tuned = enot.calibrate_and_prune_model_equal(model, data, loss_function, pruning_ratio=0.5, finetune_bn=True,
                                                 sample_to_model_inputs=lambda s: ((s[0],), {}))
    assert same_state(before, model.state_dict())
    assert widths(tuned) == [8, 16, 32, 32]
    assert not torch.allclose(tuned.features[1].running_mean, pruned.features[1].running_mean)


def test_calibrate_and_prune_model_optimal_meets_target(digits):
    model, x = digits
    before = snapshot(model)
    target = 0.5 * macs(model)
    pruned = enot.calibrate_and_prune_model_optimal(model, make_data(2), loss_function, macs, target,
                                                    n_search_steps=30, seed=0, verbose=False)
    assert same_state(before, model.state_dict())
    assert macs(pruned) <= target
    # the default channel constraint keeps >= 16 channels per group, so g0 (16 channels) stays whole
    w = widths(pruned)
    assert w[0] == 16 and min(w) >= 16
    assert pruned(x).shape == (1, 10)


# ---------------------------------------------------------------------- tables
def test_tabulate_functions(digits, info):
    model, _ = digits
    text = enot.tabulate_module_dependencies("features.3", info, model)
    assert "features.3" in text and "features.0" in text and "features.7" in text
    assert "[--]:32:(16, 47)" in text
    unprunable = enot.tabulate_unprunable_groups(info, model)
    assert "classifier.2" in unprunable and "[N-]:10:(176, 185)" in unprunable
    deps = enot.tabulate_label_dependencies(20, info, model)
    assert "label: 20" in deps and "features.3.weight" in deps and "features.7.weight" in deps
    filters_text = enot.tabulate_label_filters(enot.Label(0), info, model)
    assert "features.0.weight" in filters_text and "features.1.running_var" in filters_text
    filters = enot.get_label_filters(0, info.analysis, model, with_tensors=True)
    by_name = {f.tensor_name: f for f in filters}
    assert isinstance(filters[0], enot.LabelFilterInfo)
    assert by_name["features.0.weight"].shape == (1, 1, 3, 3)
    assert torch.equal(by_name["features.0.weight"].tensor, model.features[0].weight[:1].detach())
    node = enot.get_tracing_node_by_module_name("features.3", info)
    assert enot.get_module_name_by_tracing_node(node) == "features.3"
