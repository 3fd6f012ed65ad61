"""The Model-Optimizer-style face: profile, search (fastnas binary search, core strategies),
checkpoint / resume, data-driven calibration and user searchers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import models
from prunepass.capture import split_inputs
from prunepass.costs import count_flops
from prunepass.faces.modelopt import BaseSearcher, BinarySearcher, profile, search
from prunepass.plan import Plan


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models on a shared CPU: one intra-op thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return models.get("digits_cnn")


@pytest.fixture(scope="module")
def resnet():
    return models.get("resnet18")


def flops_of(model, inputs) -> int:
    args, kwargs = split_inputs(inputs)
    return count_flops(model, args, kwargs)


class MSEScore:
    """Negative MSE against the original model's outputs on fixed random inputs; counts calls
    and raises on call ``fail_at`` (to simulate an interrupted search)."""

    def __init__(self, model, x, fail_at: int | None = None) -> None:
        self.x = x
        with torch.no_grad():
            self.ref = model(x)
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, net) -> float:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        assert not net.training  # scores are taken in eval mode
        with torch.no_grad():
            return -float(F.mse_loss(net(self.x), self.ref))


def digits_x() -> torch.Tensor:
    return torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 16.0


# ---------------------------------------------------------------------- profile
def test_profile_stats_match_counted_flops_and_are_ordered(digits, capsys):
    model, inputs = digits
    ok, stats = profile(model, inputs, {"flops": "60%", "params": None}, use_centroid=True)
    printed = capsys.readouterr().out
    assert ok is True
    assert stats["max"]["flops"] == flops_of(model, inputs)
    assert stats["max"]["params"] == sum(p.numel() for p in model.parameters())
    for metric in ("flops", "params"):
        assert stats["min"][metric] < stats["centroid"][metric] < stats["max"][metric]
        assert stats["max/min ratio"][metric] == pytest.approx(stats["max"][metric] / stats["min"][metric])
        assert stats["ratio to max"]["min"][metric] == pytest.approx(stats["min"][metric] / stats["max"][metric])
    # digits_cnn: 4 prunable groups of 16, 32, 64, 64 channels, every width allowed
    assert stats["number of configurable hparams"] == 4
    assert stats["search space size"] == 16 * 32 * 64 * 64
    assert stats["constraints"]["flops"]["upper_bound"] == pytest.approx(0.6 * stats["max"]["flops"])
    assert stats["constraints"]["flops"]["satisfiable"] is True
    assert "Number of configurable hparams: 4" in printed and "flops" in printed
    assert "all constraints can be satisfied" in printed
    # the median over random subnets (default) also lies strictly inside the range
    _, med = profile(model, inputs, verbose=False)
    assert med["min"]["flops"] < med["centroid"]["flops"] < med["max"]["flops"]
    assert capsys.readouterr().out == ""  # verbose=False prints nothing


def test_profile_channel_constraint_dict_with_rules(digits):
    """ModelOpt-style per-layer rules through the dict form: a group kept whole leaves the
    search space (digits_cnn: the 16-channel first group, g0)."""
    model, inputs = digits
    _, stats = profile(model, inputs, verbose=False,
                       channel_constraint={"step": 8, "rules": {"g0": None, "g3": {"relative_min": 0.5}}})
    assert stats["number of configurable hparams"] == 3
    assert stats["search space size"] == 4 * 8 * 5  # g1: 8..32, g2: 8..64, g3: 32..64, step 8
    with pytest.raises(TypeError, match="must map to a ChannelConstraint"):
        profile(model, inputs, verbose=False, channel_constraint={"rules": {"g0": 3}})


def test_profile_impossible_constraint_strict_and_lenient(resnet):
    model, inputs = resnet
    with pytest.raises(ValueError, match="NOT all constraints"):
        profile(model, inputs, {"flops": "1%"}, strict=True, verbose=False)
    with pytest.warns(UserWarning, match="flops"):
        ok, stats = profile(model, inputs, {"flops": "1%"}, verbose=False)
    assert ok is False and stats["constraints"]["flops"]["satisfiable"] is False
    assert stats["max"]["flops"] == flops_of(model, inputs)
    assert stats["min"]["flops"] < stats["centroid"]["flops"] < stats["max"]["flops"]
    # an absolute bound the smallest subnet meets
    ok, _ = profile(model, inputs, {"params": 5e6, "flops": stats["min"]["flops"] * 1.01}, verbose=False)
    assert ok is True


def test_profile_rejects_unknown_constraints_before_capturing(digits):
    model, inputs = digits
    with pytest.raises(ValueError, match="unsupported constraint"):
        profile(model, inputs, {"accuracy": 0.9})
    with pytest.raises(ValueError, match="dummy_input"):
        profile(model, None)


# ---------------------------------------------------------------------- search: fastnas
def test_fastnas_search_meets_flops_constraint_in_place(digits):
    base, inputs = digits
    model = copy.deepcopy(base)
    score = MSEScore(base, digits_x())
    limit = 0.6 * flops_of(base, inputs)
    subnet, state = search(model, {"flops": "60%"}, inputs, {"score_func": score, "verbose": False})
    assert subnet is model  # like the reference product: the given model is pruned in place
    assert flops_of(subnet, inputs) <= limit
    assert state["metrics"]["flops"] == flops_of(subnet, inputs)
    assert state["metrics"]["flops"] <= state["constraints"]["flops"]
    assert subnet(digits_x()).shape == (16, 10)
    # the result is reproducible from the returned plan
    from prunepass import analyze
    from prunepass.rewrite import apply_plan

    rebuilt = apply_plan(base, analyze(base, inputs), Plan.from_dict(state["plan"]))
    x = digits_x()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), subnet(x))
    calls = score.calls
    assert state["score"] == pytest.approx(score(subnet))
    # a sensitivity map per group: the full width costs nothing, narrower widths never less
    smap = state["sensitivity_map"]
    assert set(smap) == {"g0", "g1", "g2", "g3"}
    for per in smap.values():
        widths = sorted(per)
        assert per[widths[-1]] == 0.0
        assert all(per[a] >= per[b] for a, b in zip(widths, widths[1:], strict=False))
    assert 0.0 <= state["threshold"] <= max(max(p.values()) for p in smap.values())
    assert state["original_score"] == pytest.approx(0.0)
    # original + one evaluation per non-full candidate width (+ the final subnet)
    assert calls == state["num_score_evaluations"] <= 1 + 4 * 4 + 1


def test_fastnas_checkpoint_resume_gives_same_widths_with_fewer_calls(digits, tmp_path):
    base, inputs = digits
    x = digits_x()
    constraints = {"flops": "50%"}

    full = MSEScore(base, x)
    _, ref_state = search(copy.deepcopy(base), constraints, inputs,
                          {"score_func": full, "verbose": False, "checkpoint": str(tmp_path / "full.pt")})

    ckpt = tmp_path / "run" / "search.pt"
    interrupted = MSEScore(base, x, fail_at=6)
    model = copy.deepcopy(base)
    with pytest.raises(KeyboardInterrupt):
        search(model, constraints, inputs, {"score_func": interrupted, "verbose": False, "checkpoint": str(ckpt)})
    assert ckpt.exists()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values(),
                                                   strict=True))  # untouched until the end
    saved = torch.load(ckpt, weights_only=True)["state"]
    assert saved["original_score"] is not None
    assert sum(len(v) for v in saved["sensitivity_map"].values()) >= 4

    resumed = MSEScore(base, x)
    subnet, state = search(model, constraints, inputs,
                           {"score_func": resumed, "verbose": False, "checkpoint": str(ckpt)})
    assert state["widths"] == ref_state["widths"]
    assert state["sensitivity_map"] == ref_state["sensitivity_map"]
    assert resumed.calls < full.calls
    assert resumed.calls == full.calls - (interrupted.fail_at - 1)  # the 5 finished calls were not redone
    assert flops_of(subnet, inputs) <= 0.5 * flops_of(base, inputs)

    # a finished checkpoint: nothing but the final subnet is scored again
    again = MSEScore(base, x)
    _, state2 = search(copy.deepcopy(base), constraints, inputs,
                       {"score_func": again, "verbose": False, "checkpoint": str(ckpt)})
    assert again.calls == 1 and state2["widths"] == ref_state["widths"]


def test_fastnas_on_resnet18_with_two_constraints(resnet):
    base, inputs = resnet
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    score = MSEScore(base, x)
    subnet, state = search(copy.deepcopy(base), {"flops": "60%", "params": "80%"}, inputs,
                           {"score_func": score, "verbose": False, "max_choices": 2, "inplace": False})
    assert flops_of(subnet, inputs) <= 0.6 * flops_of(base, inputs)
    assert sum(p.numel() for p in subnet.parameters()) <= 0.8 * sum(p.numel() for p in base.parameters())
    assert subnet(x).shape == base(x).shape
    assert len(state["sensitivity_map"]) == len(state["widths"]) == 12


def test_fastnas_needs_score_func_and_rejects_unknown_keys(digits):
    model, inputs = digits
    with pytest.raises(ValueError, match="score_func"):
        search(model, {"flops": "60%"}, inputs, {"verbose": False})
    with pytest.raises(ValueError, match="re-iterable"):
        search(model, {"flops": "60%"}, inputs, {"score_func": lambda m: 0.0, "data_loader": iter([(1, 2)])})
    with pytest.raises(ValueError, match="not both"):
        search(model, {"flops": "60%"}, inputs, {"score_func": lambda m: 0.0, "data_loader": [],
                                                 "forward_loop": lambda m: None})
    with pytest.raises(ValueError, match="unexpected config keys"):
        search(model, {"flops": "60%"}, inputs, {"score_func": lambda m: 0.0, "n_epochs": 3})


def test_data_loader_gives_gradient_importance_and_bn_recalibration(digits):
    base, inputs = digits
    g = torch.Generator().manual_seed(5)
    batches = [(torch.rand(8, 1, 8, 8, generator=g) * 16, torch.randint(0, 10, (8,), generator=g)) for _ in range(4)]

    class Loader:
        def __init__(self) -> None:
            self.iterations = 0

        def __iter__(self):
            for b in batches:
                self.iterations += 1
                yield b

    loader = Loader()
    model = copy.deepcopy(base)
    score = MSEScore(base, digits_x())
    subnet, state = search(model, {"flops": "60%"}, inputs, {
        "score_func": score, "verbose": False, "inplace": False, "data_loader": loader,
        "collect_func": lambda batch: batch[0], "max_iter_data_loader": 2,
        "loss_func": lambda out, batch: F.cross_entropy(out, batch[1]), "max_choices": 3})
    assert subnet is not model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values(),
                                                   strict=True))
    assert flops_of(subnet, inputs) <= 0.6 * flops_of(base, inputs)
    # calibration (2 batches) + BN recalibration of the original, every candidate and the final
    assert loader.iterations >= 2 * (1 + score.calls)
    bn = subnet.features[1]
    assert bn.momentum == base.features[1].momentum and not bn.training
    assert all(p.grad is None for p in base.parameters())
    # with data, BN statistics were re-estimated on the loader: they differ from the same plan
    # applied without recalibration
    from prunepass import analyze
    from prunepass.rewrite import apply_plan

    plain = apply_plan(base, analyze(base, inputs), Plan.from_dict(state["plan"]))
    assert plain.features[1].running_mean.shape == bn.running_mean.shape
    assert not torch.allclose(plain.features[1].running_mean, bn.running_mean)


# ---------------------------------------------------------------------- search: core strategies
@pytest.mark.parametrize("strategy", ["knapsack", "target"])
def test_core_strategies_through_search(resnet, strategy):
    base, inputs = resnet
    subnet, state = search(copy.deepcopy(base), {"flops": "60%"}, inputs,
                           {"strategy": strategy, "verbose": False, "inplace": False})
    assert flops_of(subnet, inputs) <= 0.6 * flops_of(base, inputs)
    assert state["score"] is None and state["candidates"][0]["satisfied"]
    x = torch.randn(1, 3, 64, 64)
    assert subnet(x).shape == base(x).shape


# ---------------------------------------------------------------------- user searchers
class UniformSearcher(BaseSearcher):
    """The docstring example: the same fraction of every group, largest first."""

    @property
    def default_state_dict(self):
        return {"tried": {}}

    def run_search(self):
        for frac in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
            widths = {n: min(c, key=lambda w, f=frac, c=c: abs(w - f * c[-1])) for n, c in self.choices.items()}
            self.tried[frac] = self.satisfies(widths)
            self.save_search_checkpoint()
            if self.tried[frac]:
                self.best["widths"] = widths
                return
        self.best["widths"] = {n: c[0] for n, c in self.choices.items()}


def test_user_searcher_subclass(digits, tmp_path):
    base, inputs = digits
    ckpt = tmp_path / "uniform.pt"
    score = MSEScore(base, digits_x())
    subnet, state = search(copy.deepcopy(base), {"flops": "50%"}, inputs,
                           {"strategy": UniformSearcher, "score_func": score, "verbose": False,
                            "checkpoint": str(ckpt)})
    assert flops_of(subnet, inputs) <= 0.5 * flops_of(base, inputs)
    assert state["tried"][1.0] is False and state["tried"][0.7] is True and 0.6 not in state["tried"]
    assert score.calls == 1 and state["score"] < 0.0
    assert torch.load(ckpt, weights_only=True)["state"]["tried"] == state["tried"]
    # the instance API, with a user forward loop recalibrating BatchNorm of the result
    seen = []

    def forward_loop(m):
        seen.append(m.training)
        for i in range(3):
            m(torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(i)) * 16)

    sub2, state2 = UniformSearcher().search(copy.deepcopy(base), {"flops": "50%"}, inputs,
                                            {"verbose": False, "inplace": False, "forward_loop": forward_loop})
    assert state2["widths"] == state["widths"]
    assert seen == [False]  # the model is in eval mode; only its BatchNorm layers train
    assert not any(m.training for m in sub2.modules())
    with torch.no_grad():
        assert not torch.allclose(sub2.features[1].running_mean, subnet.features[1].running_mean)
    # a checkpoint from another searcher is refused
    with pytest.raises(ValueError, match="UniformSearcher"):
        BinarySearcher().search(copy.deepcopy(base), {"flops": "50%"}, inputs,
                                {"score_func": score, "verbose": False, "checkpoint": str(ckpt)})
