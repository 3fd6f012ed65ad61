"""Importance, constraints and strategies."""

from __future__ import annotations

import copy
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import models
from prunepass import TargetNotMetError, analyze
from prunepass.costs import CostModel
from prunepass.importance import Calibrator, calibrate, finetune_bn, magnitude_scores
from prunepass.plan import Plan
from prunepass.select.constraints import ChannelConstraint, allowed_widths
from prunepass.select.strategies import (
    evolutionary_plan,
    global_plan,
    knapsack_plan,
    plan_from_widths,
    ranking_scores,
    target_plan,
)
from prunepass.select.targets import Evaluator, Target
from prunepass.select.uniform import uniform_plan


@pytest.fixture(scope="module")
def digits():
    model, inputs = models.get("digits_cnn")
    a = analyze(model, inputs)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
    return model, a, data


@pytest.fixture(scope="module")
def resnet():
    model, inputs = models.get("resnet18")
    a = analyze(model, inputs)
    return model, a, magnitude_scores(model, a)


def ce(out, batch):
    return F.cross_entropy(out, batch[1])


def test_target_parsing():
    assert Target.parse("latency=60%") == Target("latency", 0.6, True)
    assert Target.parse("params=5e6") == Target("params", 5e6, False)
    assert Target.parse({"flops": "50%"}) == Target("flops", 0.5, True)
    assert Target.parse("ratio=0.4").value == 0.4
    for bad in ("speed=2", "flops=150%", "ratio=1.5", "latency=-1"):
        with pytest.raises(ValueError):
            Target.parse(bad)


def test_calibration_leaves_model_unchanged_and_ranks_channels(digits):
    model, a, data = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for criterion in ("taylor", "taylor_acc", "fisher"):
        s = calibrate(model, a, data, ce, criterion=criterion)
        assert s.steps == len(data) and s.samples == 16 * len(data)
        assert set(s.per_group) == {g.name for g in a.prunable_groups}
        assert all(v.shape == (a.group(k).size,) and (v >= 0).all() and v.sum() > 0 for k, v in s.per_group.items())
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters() if p._post_accumulate_grad_hooks)


def test_calibrator_context_matches_function(digits):
    model, a, data = digits
    with Calibrator(model, a, "taylor") as cal:
        for x, y in data:
            F.cross_entropy(model(x), y).backward()
    ref = calibrate(model, a, data, ce)
    for k in ref.per_group:
        np.testing.assert_allclose(cal.scores[k], ref[k], rtol=1e-6)


def test_taylor_acc_uses_the_gradient_of_the_summed_loss(digits):
    """taylor_acc = |w * sum of batch gradients| per weight, summed over the channel's weights in
    the group's weight members; taylor = the per-batch |w * g| summed (never smaller)."""
    model, a, data = digits
    acc = calibrate(model, a, data, ce, criterion="taylor_acc")
    per_batch = calibrate(model, a, data, ce, criterion="taylor")
    m = copy.deepcopy(model)
    m.zero_grad()
    for x, y in data:
        F.cross_entropy(m(x), y).backward()
    members = {mb.fqn: mb for mb in a.group("g0").members if mb.fqn.endswith("weight") and mb.shape and len(mb.shape) > 1}
    expected = np.zeros(a.group("g0").size)
    for fqn, mb in members.items():
        p = m.get_parameter(fqn)
        wg = (p * p.grad).abs().detach()
        expected += wg.sum(dim=[d for d in range(wg.dim()) if d != mb.axis]).numpy()
    np.testing.assert_allclose(acc["g0"], expected, rtol=1e-4)
    assert (per_batch["g0"] >= acc["g0"] - 1e-9).all() and not np.allclose(per_batch["g0"], acc["g0"])


def test_taylor_gathers_taylor_acc_in_the_same_pass(digits):
    """calibrate(alternatives=True) with taylor also returns taylor_acc's scores, equal to a run
    of its own, and leaves the model as it was; other criteria gather no alternative."""
    model, a, data = digits
    both = calibrate(model, a, data, ce, alternatives=True)
    alone = calibrate(model, a, data, ce, criterion="taylor_acc")
    plain = calibrate(model, a, data, ce)
    assert set(both.alternatives) == {"taylor_acc"} and not plain.alternatives
    for k in plain.per_group:
        np.testing.assert_allclose(both[k], plain[k], rtol=1e-6)
        np.testing.assert_allclose(both.alternatives["taylor_acc"][k], alone[k], rtol=1e-6)
    assert not calibrate(model, a, data, ce, criterion="fisher", alternatives=True).alternatives
    assert all(p.grad is None for p in model.parameters())


def test_the_final_widths_keep_the_channels_of_the_lower_loss_criterion(digits):
    """Same widths, two channel choices (taylor and taylor_acc): the one of lower calibration
    loss is kept (own criterion on a tie), and the report says which; prune() does it too."""
    from prunepass.api import lower_loss_channels, prune

    model, a, data = digits
    scores = calibrate(model, a, data, ce, alternatives=True)
    widths = {g.name: g.size // 2 for g in a.prunable_groups}
    own = plan_from_widths(a, widths, ranking_scores(scores))
    other = plan_from_widths(a, widths, ranking_scores(scores.alternatives["taylor_acc"]))
    assert own.keep != other.keep  # the two criteria disagree on this model
    for favour in ("taylor", "taylor_acc", None):
        def loss(plan, favour=favour):
            return 1.0 if favour is None or (plan.keep == own.keep) == (favour == "taylor") else 2.0

        got = lower_loss_channels(a, own, scores, Evaluator(a, CostModel(a), None, loss))
        assert got.widths(a) == own.widths(a)
        assert got.keep == (other.keep if favour == "taylor_acc" else own.keep)
        assert got.meta["channels"]["criterion"] == (favour or "taylor")
    # no loss, nothing to compare
    assert lower_loss_channels(a, own, scores, Evaluator(a, CostModel(a))) is own
    r = prune(model, (torch.randn(1, 1, 8, 8),), data=data, loss_fn=ce, target="flops=50%", measure=False)
    losses = r.report["channels"]["losses"]
    assert set(losses) == {"taylor", "taylor_acc"} and r.report["channels"]["criterion"] == min(losses, key=losses.get)


def test_taylor_finds_dead_channels(digits):
    model, a, data = digits
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.features[3].weight[:, 2] = 0.0  # channel 2 of the first conv's output is never read
    s = calibrate(m, analyze(m, (torch.randn(1, 1, 8, 8),)), data, ce)
    assert s["g0"][2] == 0.0 and (np.delete(s["g0"], 2) > 0).all()


def test_finetune_bn_restores_modes(digits):
    model, _, data = digits
    m = copy.deepcopy(model).eval()
    finetune_bn(m, data)
    assert not any(mod.training for mod in m.modules())
    assert not torch.equal(m.features[1].running_mean, model.features[1].running_mean)


def test_channel_constraints():
    model, inputs = models.get("resnet18")
    a = analyze(model, inputs)
    big = max(a.prunable_groups, key=lambda g: g.size)  # 128+ channels: step 4 by default
    w = allowed_widths(big)
    assert w[-1] == big.size and all(x % 4 == 0 for x in w[:-1])
    c = ChannelConstraint(absolute_min=16, relative_min=0.25, step=8)
    w = allowed_widths(big, c)
    assert min(w) >= max(16, big.size // 4) and all(x % 8 == 0 for x in w)
    plan = uniform_plan(a, 0.9, constraint=c)
    widths = plan.widths(a)
    assert all(widths[g.name] >= min(16, g.size) for g in a.prunable_groups)


def test_channel_rules_keep_matched_groups_whole_in_every_strategy(resnet):
    """A rule mapping a pattern to None keeps the groups it matches at full width, whatever
    the strategy; the other groups are still pruned."""
    model, a, s = resnet
    c = ChannelConstraint(step=8, rules={"layer4.*": None, "g0": None})
    kept = {g.name for g in a.prunable_groups if c.for_group(g) is None}
    owners = {g.name: {m.fqn.rpartition(".")[0] for m in g.members if m.role != "in"} for g in a.prunable_groups}
    assert "g0" in kept and any(any(o.startswith("layer4.") for o in owners[n]) for n in kept)
    # a group only *read* by a layer4 module (the input of layer4.0.conv1) is not matched
    assert all(n == "g0" or any(o.startswith("layer4.") for o in owners[n]) for n in kept)
    plans = [uniform_plan(a, 0.6, s.per_group, c), global_plan(a, s, 0.6, c),
             target_plan(a, s, Target.parse("flops=60%"), Evaluator(a), c)[0],
             knapsack_plan(a, s, Target.parse("flops=60%"), Evaluator(a), c)[0]]
    for plan in plans:
        widths = plan.widths(a)
        assert all(widths[n] == a.group(n).size for n in kept)
        assert sum(widths[g.name] < g.size for g in a.prunable_groups) >= 5


def test_channel_rules_last_match_wins_and_inherit_the_step(resnet):
    _, a, _ = resnet
    big = next(g for g in a.prunable_groups if g.size >= 128)
    small = a.group("g0")
    c = ChannelConstraint(step=8, rules={"*": {"relative_min": 0.5}, small.name: ChannelConstraint(step=4)})
    assert allowed_widths(big, c) == list(range(big.size // 2, big.size + 1, 8))  # step 8 inherited
    assert allowed_widths(small, c) == list(range(4, small.size + 1, 4))  # the later rule wins
    assert c == ChannelConstraint(step=8, rules=c.rules) and hash(c) == hash(ChannelConstraint(step=8, rules=c.rules))
    with pytest.raises(TypeError, match="must map to a ChannelConstraint"):
        ChannelConstraint(rules={"g1": 8})
    with pytest.raises(ValueError, match="rules of its own"):
        ChannelConstraint(rules={"g1": ChannelConstraint(rules={"g2": None})})


def test_latency_constraint_adds_the_latency_step_unless_the_constraint_has_one(monkeypatch):
    """The constraint a latency target searches under: the user's, with the latency step when it
    sets no step of its own; its other fields and rules stay."""
    from prunepass.api import latency_constraint

    monkeypatch.delenv("PRUNEPASS_LATENCY_STEP", raising=False)
    assert latency_constraint().step == 8 and latency_constraint(None) == ChannelConstraint(step=8)
    assert latency_constraint(ChannelConstraint(step=4)) == ChannelConstraint(step=4)
    rules = {"g0": None, "layer4.*": ChannelConstraint(relative_min=0.5)}
    c = latency_constraint(ChannelConstraint(absolute_min=16, rules=rules))
    assert c == ChannelConstraint(absolute_min=16, step=8, rules=rules)
    monkeypatch.setenv("PRUNEPASS_LATENCY_STEP", "16")
    assert latency_constraint().step == 16


def test_channel_rules_matching_nothing_warn(resnet):
    from prunepass.api import select_plan

    _, a, s = resnet
    c = ChannelConstraint(rules={"layer9.*": None, "g0": None})
    with pytest.warns(UserWarning, match=r"\['layer9.\*'\] match no prunable group"):
        plan, _ = select_plan(a, s, Target.parse("ratio=0.5"), constraint=c)
    assert plan.widths(a)["g0"] == a.group("g0").size
    from prunepass.profile import profile_analysis

    with pytest.warns(UserWarning, match=r"\['layer9.\*'\] match no prunable group"):
        stats = profile_analysis(a, c)
    assert stats["configurable"] == len(a.prunable_groups) - 1


def test_head_dim_rule_removes_whole_heads_only():
    """``rules={"head_dim": None}``: the knapsack may drop heads but never narrows a head."""
    model, inputs = models.get("vit")
    a = analyze(model, inputs)
    s = magnitude_scores(model, a)
    plan, rep = knapsack_plan(a, s, Target.parse("flops=50%"), Evaluator(a), ChannelConstraint(rules={"head_dim": None}))
    widths = plan.widths(a)
    head_dims = [g for g in a.prunable_groups if "head_dim" in g.tags]
    assert head_dims and rep.met
    assert all(widths[g.name] == g.size for g in head_dims)
    free, _ = knapsack_plan(a, s, Target.parse("flops=50%"), Evaluator(a))
    assert any(free.widths(a)[g.name] < g.size for g in head_dims)  # without the rule it would narrow them


def test_uniform_and_global(resnet):
    model, a, s = resnet
    plan = uniform_plan(a, 0.5, s.per_group)
    for g in a.prunable_groups:
        kept = plan.keep.get(g.name, tuple(range(g.size)))
        assert abs(len(kept) - g.size / 2) <= 4
        # the kept channels are the most important ones
        order = np.argsort(-s[g.name])[: len(kept)]
        assert set(kept) == set(order.tolist())
    gp = global_plan(a, s, 100)
    removed = sum(g.size - len(gp.keep.get(g.name, range(g.size))) for g in a.prunable_groups)
    assert 90 <= removed <= 110  # width steps round per group


@pytest.mark.parametrize("metric", ["flops", "params"])
@pytest.mark.parametrize("strategy", [target_plan, knapsack_plan])
def test_cost_targets_are_met(resnet, metric, strategy):
    model, a, s = resnet
    ev = Evaluator(a)
    plan, rep = strategy(a, s, Target.parse(f"{metric}=40%"), ev)
    assert rep.met and rep.achieved <= 0.4 * rep.base + 1e-6
    assert rep.achieved >= 0.3 * rep.base  # close to the target, not far below
    assert ev.value(metric, plan) == rep.achieved


def test_knapsack_keeps_more_importance_than_threshold(resnet):
    model, a, s = resnet
    ev = Evaluator(a)
    t = Target.parse("flops=50%")
    _, r1 = target_plan(a, s, t, ev)
    _, r2 = knapsack_plan(a, s, t, ev)
    best = {r.strategy: max(h["score"] for h in r.history if h["value"] <= r.goal) for r in (r1, r2)}
    assert best["knapsack"] >= best["target"]


def test_impossible_target_strict_raises_and_lenient_warns(resnet):
    model, a, s = resnet
    ev = Evaluator(a)
    c = ChannelConstraint(absolute_min=16, relative_min=0.5)
    with pytest.raises(TargetNotMetError, match="not met"):
        target_plan(a, s, Target.parse("flops=1%"), ev, c, strict=True)
    with pytest.warns(UserWarning, match="not met"):
        plan, rep = knapsack_plan(a, s, Target.parse("flops=1%"), ev, c)
    assert not rep.met and rep.message
    assert rep.achieved == min(h["value"] for h in rep.history)


def test_evolutionary_search_resumes_to_the_same_answer(resnet, tmp_path):
    model, a, s = resnet
    ev = Evaluator(a)
    t = Target.parse("flops=50%")
    full, rep = evolutionary_plan(a, s, t, ev, n_search_steps=60, seed=3)
    assert rep.met
    ckpt = tmp_path / "search.json"
    with pytest.raises(KeyboardInterrupt):
        evolutionary_plan(a, s, t, ev, n_search_steps=60, seed=3, checkpoint=ckpt, stop_after=25)
    assert ckpt.exists()
    resumed, rep2 = evolutionary_plan(a, s, t, ev, n_search_steps=60, seed=3, checkpoint=ckpt)
    assert resumed.keep == full.keep and rep2.achieved == rep.achieved
    other, _ = evolutionary_plan(a, s, t, ev, n_search_steps=60, seed=4)
    assert CostModel(a).flops(other.widths(a)) <= 0.5 * CostModel(a).flops()


def test_plan_widths_from_scores(resnet):
    model, a, s = resnet
    g = a.prunable_groups[0]
    plan = Plan.from_widths(a, {g.name: 3}, s.per_group)
    assert set(plan.keep[g.name]) == set(np.argsort(-s[g.name])[:3].tolist())


@pytest.mark.parametrize("name", ["llama", "vit", "shufflenet_v2"])
def test_channel_ownership_matches_index_maps(name):
    """owner_indices (used by importance) agrees with kept_indices (used by the rewrite)."""
    from prunepass.dims import owner_indices
    from prunepass.program import _Sizes

    model, inputs = models.get(name)
    a = analyze(model, inputs)
    sizes = _Sizes(a.flow)
    for g in a.prunable_groups:
        for m in g.members:
            owner = owner_indices(a.axis_expr(m.fqn, m.axis), sizes, a.symbol(g.name))
            for c in (0, g.size - 1):
                others = [i for i in range(g.size) if i != c]
                without = set(a.kept_indices(m.fqn, m.axis, {g.name: others}))
                expected = [i for i in range(m.shape[m.axis]) if i not in without]
                assert [i for i, o in enumerate(owner) if o == c] == expected, (g.name, m.fqn)


class _StubLatency:
    """Deterministic stand-in for the ORT oracle: overhead + FLOPs, with a penalty for channel
    counts that are not multiples of 8 (the effect real CPU kernels show)."""

    def __init__(self, a) -> None:
        self.cost = CostModel(a)
        self.analysis = a
        self.runs = 10
        self.cache: dict = {}

    def __call__(self, plan):
        widths = plan.widths(self.analysis)
        odd = sum(w % 8 != 0 for w in widths.values())
        return 0.2 + self.cost.flops(widths) / self.cost.flops() + 0.05 * odd

    def measure(self, plan, runs=None):
        return self(plan)


@pytest.mark.parametrize("strategy", [target_plan, knapsack_plan])
def test_latency_target_with_deterministic_oracle(resnet, strategy):
    model, a, s = resnet
    ev = Evaluator(a, CostModel(a), _StubLatency(a))
    plan, rep = strategy(a, s, Target.parse("latency=70%"), ev, ChannelConstraint(step=8))
    assert rep.met and rep.achieved <= 0.7 * rep.base
    assert rep.achieved >= 0.6 * rep.base  # close to the target, not far below
    assert all(w % 8 == 0 or w == g.size for g in a.prunable_groups for w in [plan.widths(a)[g.name]])


class _BiasedStub(_StubLatency):
    """A stub whose deployed model runs ``bias`` times the search's timing (the fast path's
    template is not the shipped export)."""

    def __init__(self, a, bias: float) -> None:
        super().__init__(a)
        self.bias = bias
        self.deployed_calls = 0

    def deployed_ratios(self, plans):
        self.deployed_calls += 1
        return [self.bias * self(plan) / self(Plan.from_keep(self.analysis, {})) for plan in plans]


@pytest.mark.parametrize("bias", [0.88, 1.1])
def test_latency_answer_settles_on_the_deployed_timing(resnet, bias):
    """The knapsack's answer is re-timed as deployed; when that lands off the goal (fast-path
    bias either way) it is widened or narrowed until the deployed timing is near the goal, and
    the report's achieved value is the deployed timing (a latency target is a band: at most
    SETTLE_BAND over)."""
    from prunepass.select.strategies import SETTLE_BAND

    model, a, s = resnet
    target = Target.parse("latency=70%")
    plain_plan, _ = knapsack_plan(a, s, target, Evaluator(a, CostModel(a), _StubLatency(a)),
                                  ChannelConstraint(step=8))
    stub = _BiasedStub(a, bias)
    plan, rep = knapsack_plan(a, s, target, Evaluator(a, CostModel(a), stub), ChannelConstraint(step=8))
    calls = stub.deployed_calls
    deployed, unsettled = (r * rep.base for r in stub.deployed_ratios([plan, plain_plan]))
    assert calls >= 2  # the answer, then the answer and a moved one together
    # without settling, the biased runtime would land far off the goal
    assert abs(unsettled / rep.goal - 1) > 0.08
    assert rep.achieved == pytest.approx(deployed)
    assert rep.goal * (1 - 2 * SETTLE_BAND) <= deployed <= rep.goal * (1 + SETTLE_BAND)
    assert any(h.get("deployed") for h in rep.history)
    assert abs(deployed / rep.goal - 1) < abs(unsettled / rep.goal - 1)
    assert plan.widths(a) != plain_plan.widths(a)
    # the report says which step chose the shipped widths: the MILP first, the deployed answer last,
    # and a settle step in between that moved the plan
    names = [st["stage"].split(" ")[0] for st in rep.stages]
    assert names[0] == "milp" and names[-1] == "deployed" and "settle" in names
    assert rep.stages[-1]["widths"] == plan.widths(a) and rep.stages[-1]["latency"] == pytest.approx(rep.achieved)
    assert rep.stages[names.index("candidates")]["widths"] != plan.widths(a)


def _knapsack_at_70(resnet, stub):
    """(plan, report, deployed latency of the plan) of the knapsack at latency=70 % on ``stub``."""
    model, a, s = resnet
    plan, rep = knapsack_plan(a, s, Target.parse("latency=70%"), Evaluator(a, CostModel(a), stub),
                              ChannelConstraint(step=8))
    return plan, rep, stub.deployed_ratios([plan])[0] * rep.base


class _BusyAfterDeployStub(_BiasedStub):
    """The machine turns busy once the answer is first timed as deployed: search timings from
    then on run 25 % slower against the original's, taken before; deployed timings are paired
    with the original's, so the state does not move them."""

    def __call__(self, plan):
        return (1.25 if self.deployed_calls else 1.0) * super().__call__(plan)

    def deployed_ratios(self, plans):
        self.deployed_calls += 1
        full = Plan.from_keep(self.analysis, {})
        return [self.bias * _StubLatency.__call__(self, p) / _StubLatency.__call__(self, full) for p in plans]


def test_settle_step_aims_on_timings_taken_in_the_same_state(resnet, monkeypatch):
    """The deployed answer runs 10 % over its goal and the machine turns busy as the settle step
    starts: the step's goal is rescaled against a timing of the answer taken now, not its search
    timing from before the change, so it narrows to the goal instead of 24 % past it (which is
    further off than the answer, so the answer stayed 9 % over; the neighbour passes, off here,
    can bridge that on this stub but not on the zoo's resnet50 in a busy spell)."""
    import prunepass.select.strategies as strategies
    from prunepass.select.strategies import SETTLE_BAND

    monkeypatch.setattr(strategies, "NEIGHBOUR_PASSES", 0)
    plan, rep, deployed = _knapsack_at_70(resnet, _BusyAfterDeployStub(resnet[1], 1.1))
    assert rep.met and rep.achieved == pytest.approx(deployed)
    assert abs(deployed / rep.goal - 1) <= 2 * SETTLE_BAND


class _SteepStub(_BiasedStub):
    """The deployed model's latency ratio grows as the square of the search's (the bias of the
    fast path is not one number): a move aimed on one plan's bias jumps over the goal."""

    def deployed_ratios(self, plans):
        self.deployed_calls += 1
        full = self(Plan.from_keep(self.analysis, {}))
        return [self.bias * (self(p) / full) ** 2 for p in plans]


def test_settle_step_tries_halfway_when_a_move_jumps_over_the_goal(resnet, monkeypatch):
    """The answer lands 10 % over as deployed; the settle move aimed on its bias lands about 9 %
    under.  A plan halfway between (some of the narrowed groups put back) is timed too, and it
    lands in the band where the answer and the move did not (one settle try, no neighbour pass)."""
    import prunepass.select.strategies as strategies

    monkeypatch.setattr(strategies, "SETTLE_TRIES", 1)
    monkeypatch.setattr(strategies, "NEIGHBOUR_PASSES", 0)
    # a plan timed at 0.7 of the original deploys at 0.77
    plan, rep, deployed = _knapsack_at_70(resnet, _SteepStub(resnet[1], 1.1 / 0.7))
    names = [st["stage"].split(" ")[0:2] for st in rep.stages]
    assert ["settle", "halfway"] in names
    assert abs(deployed / rep.goal - 1) <= 2 * strategies.SETTLE_BAND
    assert rep.achieved == pytest.approx(deployed)


class _DampedStub(_BiasedStub):
    """The deployed ratio moves less than the search's timing (as its power 0.3 around 0.7): a
    move aimed on one plan's bias stops short of the goal."""

    def deployed_ratios(self, plans):
        self.deployed_calls += 1
        full = self(Plan.from_keep(self.analysis, {}))
        return [self.bias * 0.7 * (self(p) / full / 0.7) ** 0.3 for p in plans]


def test_settle_step_keeps_a_narrowing_that_is_still_over_but_nearer(resnet, monkeypatch):
    """The answer lands 10 % over as deployed and the first narrowing only gets it to about 6 %
    over, past CLOSER_OVER: that move is kept (it is nearer the goal, and the answer was further
    past the limit) and narrowed again, instead of shipping the answer 10 % over (resnet50 at
    60 %: +8.8 % answered, +6.7 % narrowed, the answer kept and reported missed)."""
    import prunepass.select.strategies as strategies

    monkeypatch.setattr(strategies, "NEIGHBOUR_PASSES", 0)
    plan, rep, deployed = _knapsack_at_70(resnet, _DampedStub(resnet[1], 1.1))
    narrowed = [st for st in rep.stages if st["stage"].startswith("settle narrow")]
    assert len(narrowed) == 2  # the second narrowing starts from the first
    assert rep.achieved == pytest.approx(deployed) and deployed <= rep.goal * (1 + strategies.CLOSER_OVER)


class _CoarseStub(_BiasedStub):
    """Latency of the digits CNN where only the first two groups count, in steps so coarse that
    no single step from (8, 16) lands near 0.78: g0 16 -> +0.25, g1 +-8 -> +-0.075."""

    def __call__(self, plan):
        w = plan.widths(self.analysis)
        return 0.2 + 0.5 * w["g0"] / 16 + 0.3 * w["g1"] / 32


def _settle_setup(a, stub, widths):
    """(evaluator, rank, step-8 options, plan, kept value) of ``widths`` on a stub latency."""
    from prunepass.select.strategies import kept_value, plan_from_widths

    rank = {g.name: np.linspace(1.0, 0.1, g.size) for g in a.prunable_groups}
    options = {g.name: allowed_widths(g, ChannelConstraint(step=8)) for g in a.prunable_groups}
    value = sum(kept_value(rank[k], w) for k, w in widths.items())
    return Evaluator(a, CostModel(a), stub), rank, options, plan_from_widths(a, widths, rank), value


def test_settle_reaches_the_band_between_coarse_steps(digits):
    """When every single step of a small network jumps over the band, the settle step tries
    plans two steps away (one group up, another down) and keeps one measured in the band."""
    from prunepass.select.strategies import SETTLE_BAND, _settle_neighbours, kept_value, plan_from_widths

    model, a, _ = digits
    stub = _CoarseStub(a, 1.0)
    widths = {"g0": 8, "g1": 16, "g2": 32, "g3": 32}
    ev, rank, options, plan, value = _settle_setup(a, stub, widths)
    goal, history = 0.78, []
    start = stub(plan)
    assert abs(start / goal - 1) > 0.2
    for name in ("g0", "g1"):  # no single step of the groups that matter reaches the band
        for w in options[name]:
            assert abs(stub(plan_from_widths(a, {**widths, name: w}, rank)) / goal - 1) > SETTLE_BAND
    new_plan, deployed, new_value = _settle_neighbours(a, ev, rank, options, (plan, start, value), start, goal,
                                                       history)
    got = new_plan.widths(a)
    assert deployed == pytest.approx(stub(new_plan))
    assert abs(deployed / goal - 1) <= SETTLE_BAND
    assert (got["g0"], got["g1"]) == (16, 8)  # g0 up and g1 down
    assert new_value == pytest.approx(sum(kept_value(rank[k], w) for k, w in got.items() if k in widths))
    assert any(h.get("deployed") for h in history)


@pytest.mark.parametrize("with_loss", [True, False])
def test_settle_neighbours_in_a_small_space_shortlist_by_calibration_loss(digits, with_loss):
    """Of the many plans predicted in the band (here every g2, g3 goes with g0 up and g1 down),
    a small space with a calibration loss times the lowest-loss ones: the answer keeps a narrow
    g3 that this loss prefers, where the most valuable (widest) ones would be shortlisted by
    kept importance alone."""
    from prunepass.select.strategies import SETTLE_BAND, _settle_neighbours

    model, a, _ = digits
    stub = _CoarseStub(a, 1.0)
    widths = {"g0": 8, "g1": 16, "g2": 32, "g3": 32}
    _, rank, options, plan, value = _settle_setup(a, stub, widths)

    def loss(p):
        w = p.widths(a)
        return w["g3"] / 64 + 0.5 * (w["g0"] != 16)

    ev = Evaluator(a, CostModel(a), stub, loss if with_loss else None)
    got, deployed, _ = _settle_neighbours(a, ev, rank, options, (plan, stub(plan), value), stub(plan), 0.78, [])
    w = got.widths(a)
    assert abs(deployed / 0.78 - 1) <= SETTLE_BAND and (w["g0"], w["g1"]) == (16, 8)
    if with_loss:
        assert w["g3"] == 16 and loss(got) < loss(plan)  # two steps down: the furthest a pass moves a group
    else:
        assert w["g3"] >= widths["g3"]


class _RampStub(_BiasedStub):
    """Latency of the digits CNN where only g2 counts, 0.05 per 8 channels: from g2 = 8 (0.2)
    the goal 0.4 lies four steps up, two more than one neighbour pass moves a group."""

    def __call__(self, plan):
        return 0.2 + 0.05 * (plan.widths(self.analysis)["g2"] / 8 - 1)


@pytest.mark.parametrize("passes", [1, 2])
def test_neighbour_passes_walk_to_a_far_band(digits, monkeypatch, passes):
    """When the plans in the band lie further than one neighbour pass reaches, a second pass
    from the plan the first one moved to gets there; with one pass the answer stops halfway."""
    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _RampStub(a, 1.0)
    ev, rank, options, plan, value = _settle_setup(a, stub, {"g0": 8, "g1": 16, "g2": 8, "g3": 32})
    # isolate the neighbour passes: the widen / narrow step moves nothing
    monkeypatch.setattr(strategies, "_step_latency", lambda analysis, evaluator, rank, options, chosen, *a, **k: chosen)
    monkeypatch.setattr(strategies, "NEIGHBOUR_PASSES", passes)
    goal = 0.4
    got, deployed, _ = strategies._settle_deployed(a, ev, rank, options, (plan, stub(plan), value), goal, [], [])
    assert deployed == pytest.approx(stub(got))
    if passes == 1:
        assert got.widths(a)["g2"] == 24 and deployed == pytest.approx(0.3)
    else:
        assert got.widths(a)["g2"] == 40 and deployed == pytest.approx(goal)


class _OverheadStub(_BiasedStub):
    """The digits CNN at batch 1: the search's timings are nearly flat in the widths (within
    5 % from the narrowest network to the widest), but as deployed a wider network is up to
    30 % slower."""

    def __call__(self, plan):
        return 0.9 + 0.04 * self.cost.flops(plan.widths(self.analysis)) / self.cost.flops()

    def deployed_ratios(self, plans):
        self.deployed_calls += 1
        return [(0.7 + 0.3 * self.cost.flops(p.widths(self.analysis)) / self.cost.flops()) for p in plans]


@pytest.mark.parametrize("deployed", [True, False])
def test_infeasible_latency_target_picks_the_fastest_as_deployed(digits, deployed):
    """When no candidate reaches the goal, "as fast as the fastest" is judged on the candidates
    timed together as deployed: the search's flat timings would let a wider, slower network
    (more kept importance) win."""
    from prunepass.select.strategies import _pick_latency_candidate

    model, a, _ = digits
    stub = _OverheadStub(a, 1.0)
    if not deployed:
        stub.deployed_ratios = None  # an oracle that cannot time deployments
    floor = {g.name: 8 for g in a.prunable_groups}
    ev, rank, options, plan, value = _settle_setup(a, stub, floor)
    chosen = (plan, stub(plan), value)
    got = _pick_latency_candidate(a, ev, rank, options, ChannelConstraint(step=8), chosen, 0.5, 0.03, [], [])
    widths = {k: got[0].widths(a)[k] for k in floor}
    if deployed:
        assert stub.deployed_calls == 1 and widths == floor
    else:  # the search's timings alone cannot tell: the widest "as fast" one wins
        assert widths != floor and got[2] > value


@pytest.mark.parametrize("with_loss", [True, False])
def test_settle_narrowing_is_guided_by_the_calibration_loss(digits, with_loss):
    """Narrowing an answer that runs over its goal: by summed importance alone the first group
    goes first (its channels score lowest per FLOP), though the network cannot spare it; with a
    calibration loss the step that raises the loss least per FLOP removed is taken instead, and
    the narrowed plan still reaches the goal."""
    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _StubLatency(a)
    start = {"g0": 16, "g1": 32, "g2": 64, "g3": 64}
    _, rank, options, plan, _ = _settle_setup(a, stub, start)
    rank = {**rank, "g0": np.full(16, 1e-6)}  # g0 looks free to the summed importance

    def loss(p):
        w = p.widths(a)
        return 10.0 / w["g0"] + 0.1 / w["g2"] + 0.1 / w["g3"] + 0.1 / w["g1"]

    ev = Evaluator(a, CostModel(a), stub, loss if with_loss else None)
    value = sum(strategies.kept_value(rank[k], w) for k, w in start.items())
    goal = 0.93 * stub(plan)
    got, latency, _ = strategies._step_latency(a, ev, rank, options, (plan, stub(plan), value), goal,
                                               [(float(ev.cost.flops()), stub(plan))], [], widen=False)
    assert latency == pytest.approx(stub(got)) and latency <= goal
    if with_loss:
        assert got.widths(a)["g0"] == 16 and loss(got) < 10.0 / 8
    else:
        assert got.widths(a)["g0"] < 16


@pytest.mark.parametrize("timed", [True, False])
def test_settle_narrowing_in_a_small_space_takes_the_lowest_loss_plan_that_reaches_the_goal(digits, monkeypatch,
                                                                                             timed):
    """An answer 6 % over its goal that one step of each cheap group cannot bring down: step by
    step, the narrowing had to cut a group the network cannot spare (the digits CNN at batch 64:
    16,16,32,32, loss 0.05, narrowed to 8,16,24,32, loss 0.9); over the whole small space it
    narrows the cheap group by two steps instead: the lowest-loss plan timed under the goal, or
    (``timed=False``: none was) the lowest-loss narrower plan its FLOPs predict there."""
    import prunepass.select.strategies as strategies

    if not timed:
        monkeypatch.setattr(strategies, "_small_space_candidates", lambda *args, **kw: [])
    model, a, _ = digits
    stub = _StubLatency(a)
    start = {"g0": 16, "g1": 16, "g2": 32, "g3": 32}
    _, rank, options, plan, _ = _settle_setup(a, stub, start)

    def loss(p):
        w = p.widths(a)
        return 10.0 / w["g0"] + 10.0 / w["g1"] + 0.1 / w["g2"] + 0.1 / w["g3"]

    ev = Evaluator(a, CostModel(a), stub, loss)
    value = sum(strategies.kept_value(rank[k], w) for k, w in start.items())
    goal = 0.94 * stub(plan)
    cheap = [strategies.plan_from_widths(a, {**start, "g2": 24, "g3": 24}, rank)]
    assert stub(cheap[0]) > goal  # one step of each cheap group does not reach the goal
    got, latency, _ = strategies._step_latency(a, ev, rank, options, (plan, stub(plan), value), goal,
                                               [(float(ev.cost.flops()), stub(plan))], [], widen=False)
    assert latency == pytest.approx(stub(got)) and latency <= goal
    assert got.widths(a)["g0"] == 16 and got.widths(a)["g1"] == 16 and got.widths(a)["g2"] < 24
    assert loss(got) < 10.0 / 16 + 10.0 / 8  # cutting g0 or g1 would cost at least this


class _FlatStub(_BiasedStub):
    """The digits CNN at batch 1, searched and deployed alike: per-operator overhead is most of
    the latency, so the narrowest network is barely faster than much wider ones."""

    def __call__(self, plan):
        return 0.7 + 0.3 * self.cost.flops(plan.widths(self.analysis)) / self.cost.flops()


class _SlowLongTimingsStub(_FlatStub):
    """``_FlatStub`` whose longer timings (``measure`` with ``runs``) of every plan but the
    narrowest come out ``noise`` times slow: a busy spell while they ran.  The deployed timings
    are the true ones."""

    def __init__(self, a, noise: float) -> None:
        super().__init__(a, 1.0)
        self.noise = noise

    def measure(self, plan, runs=None):
        narrowest = all(w == 8 for w in plan.widths(self.analysis).values())
        return self(plan) * (self.noise if runs and not narrowest else 1.0)


def _pick_from_the_narrowest(a, stub, loss):
    """``_pick_latency_candidate`` for a goal of 0.5 from the narrowest plan (every group at 8),
    the unpruned and narrowest plans' timings as the latency fit's points.  Returns the pick, the
    narrowest plan, the ranking and the width options."""
    import prunepass.select.strategies as strategies

    floor = {g.name: 8 for g in a.prunable_groups}
    _, rank, options, plan, value = _settle_setup(a, stub, floor)
    ev = Evaluator(a, CostModel(a), stub, loss)
    full = strategies.plan_from_widths(a, {g.name: g.size for g in a.prunable_groups}, rank)
    points = [(float(ev.cost.flops()), stub(full)), (float(ev.cost.flops(floor)), stub(plan))]
    got = strategies._pick_latency_candidate(a, ev, rank, options, ChannelConstraint(step=8),
                                             (plan, stub(plan), value), 0.5, 0.03, points, [])
    return got, plan, rank, options


@pytest.mark.parametrize("noise", [1.0, 1.2])
def test_infeasible_latency_target_returns_the_most_accurate_as_fast_plan(digits, noise):
    """When no plan reaches the goal, the small space's lowest-loss plans about as fast as the
    fastest found (within NEAR_FASTEST) compete with it: the answer is the lowest-loss plan of
    that speed, not the narrowest network (batch 1: 29 % against 89 % accuracy for 4 %), or one
    a little slower that cuts the loss by KNEE_GAIN or more (``_knee``).  The
    deployed timing of the finalists judges "as fast"; a longer search timing taken in a busy
    spell (``noise``) does not shut a plan out before it."""
    import itertools

    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _SlowLongTimingsStub(a, noise)

    def loss(plan):
        w = plan.widths(a)
        return 1.0 / (w["g0"] * w["g1"] * min(w["g2"], w["g3"]))

    got, plan, rank, options = _pick_from_the_narrowest(a, stub, loss)
    every = [strategies.plan_from_widths(a, dict(zip(options, c, strict=True)), rank)
             for c in itertools.product(*options.values())]
    fastest = min(stub(p) for p in every)
    assert fastest > 0.5  # the goal is out of reach
    as_fast = [p for p in every if stub(p) <= fastest * strategies.NEAR_FASTEST]
    best = min(loss(p) for p in as_fast)
    assert loss(got[0]) <= best < loss(plan) and got[0].widths(a) != plan.widths(a)
    assert stub(got[0]) <= fastest * strategies.KNEE_LIMIT
    if stub(got[0]) > fastest * strategies.NEAR_FASTEST:  # past the band only at the knee
        assert loss(got[0]) <= (1 - strategies.KNEE_GAIN) * best


class _BarelyFasterStub(_FlatStub):
    """The digits CNN at batch 1 on a machine where even the narrowest network runs at 0.84 of
    the original: ``KNEE_LIMIT`` times the fastest lies past the unpruned model."""

    def __call__(self, plan):
        return 0.84 + 0.16 * self.cost.flops(plan.widths(self.analysis)) / self.cost.flops()


def test_the_knee_keeps_most_of_the_speed_up_when_the_fastest_is_barely_faster(digits):
    """The knee's walk stops ``KNEE_SHARE`` of the way from the fastest plan to the original:
    where the narrowest network is barely faster than the original, every step toward the
    unpruned model pays in calibration loss, and the walk (limited only by ``KNEE_LIMIT`` times
    the fastest, 1.06 of the original here) ended on the unpruned model itself."""
    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _BarelyFasterStub(a, 1.0)

    def loss(plan):
        w = plan.widths(a)
        return 1.0 / (w["g0"] * w["g1"] * min(w["g2"], w["g3"]))

    got, plan, rank, _ = _pick_from_the_narrowest(a, stub, loss)
    full = strategies.plan_from_widths(a, {g.name: g.size for g in a.prunable_groups}, rank)
    fastest = stub(plan)
    assert fastest * strategies.KNEE_LIMIT > stub(full) == 1.0  # the old limit admitted the original
    assert stub(got[0]) <= fastest + strategies.KNEE_SHARE * (1.0 - fastest) < 0.95
    assert loss(got[0]) < loss(plan) / 4  # still far more accurate than the narrowest network
    assert strategies._knee_limit(0.6, 1.0) == pytest.approx(0.6 * strategies.KNEE_LIMIT)  # a fast floor: the usual limit
    assert strategies._knee_limit(1.1, 1.0) == 1.1  # nothing faster than the original: no walk past the fastest


def test_an_unreachable_goal_is_not_settled_toward_the_goal(digits):
    """The knapsack's answer to a goal no plan reaches is the candidates' pick, judged as deployed
    among the plans about as fast as the fastest: the settle step, which moves an answer toward
    its goal, would narrow it back to the fastest (least accurate) plan, so it does not run."""
    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _FlatStub(a, 1.0)

    def loss(plan):
        w = plan.widths(a)
        return 1.0 / (w["g0"] * w["g1"] * min(w["g2"], w["g3"]))

    plan, rep = knapsack_plan(a, magnitude_scores(model, a), Target.parse("latency=50%"),
                              Evaluator(a, CostModel(a), stub, loss), ChannelConstraint(step=8))
    names = [st["stage"].split(" ")[0] for st in rep.stages]
    assert not rep.met and "settle" not in names and "neighbours" not in names
    assert rep.stages[names.index("candidates")]["widths"] == plan.widths(a)
    narrowest = strategies.plan_from_widths(a, {g.name: 8 for g in a.prunable_groups}, None)
    assert loss(plan) < loss(narrowest) and rep.achieved == pytest.approx(stub(plan))


def test_an_unreachable_goal_can_ask_for_the_fastest_plan(digits):
    """``unreachable="fastest"`` gives a goal no plan reaches the plan that timed fastest as
    deployed, whatever its loss (the default knee trades a few percent of latency for a much
    lower loss); the option is checked before any search, and only the knapsack takes it."""
    import prunepass.select.strategies as strategies
    from prunepass.api import select_plan

    model, a, _ = digits
    stub = _FlatStub(a, 1.0)

    scored = []

    def loss(plan):
        w = plan.widths(a)
        scored.append(tuple(w.values()))
        return 1.0 / (w["g0"] * w["g1"] * min(w["g2"], w["g3"]))

    def run(unreachable):
        scored.clear()
        got = knapsack_plan(a, magnitude_scores(model, a), Target.parse("latency=50%"),
                            Evaluator(a, CostModel(a), stub, loss), ChannelConstraint(step=8), unreachable=unreachable)
        return (*got, len(set(scored)))

    fastest, rep, fastest_scored = run("fastest")
    knee, _, knee_scored = run("knee")
    narrowest = strategies.plan_from_widths(a, {g.name: 8 for g in a.prunable_groups}, None)
    assert not rep.met and fastest.widths(a) == narrowest.widths(a)
    assert stub(knee) > stub(fastest) and loss(knee) < loss(fastest)
    # the plans near the fastest are ranked by loss for the knee only: "fastest" skips that work
    assert fastest_scored < knee_scored
    with pytest.raises(ValueError, match="unreachable must be one of"):
        run("closest")
    with pytest.raises(ValueError, match="option of the knapsack strategy"):
        select_plan(a, magnitude_scores(model, a), Target.parse("latency=50%"), strategy="target",
                    evaluator=Evaluator(a, CostModel(a), stub), unreachable="fastest")


def test_an_unreachable_goal_stops_at_the_knee(digits):
    """From the lowest-loss plan about as fast as the fastest, the answer moves on to a plan at
    most KNEE_STEP slower whose loss is at least KNEE_GAIN lower, step by step, and stops where
    a further step buys less (or would pass the limit)."""
    import prunepass.select.strategies as strategies

    model, a, _ = digits
    _, rank, _, _, _ = _settle_setup(a, _StubLatency(a), {g.name: 8 for g in a.prunable_groups})
    table = {  # (g1, g2): (latency as deployed, calibration loss)
        (8, 8): (1.00, 2.0),  # the fastest
        (8, 16): (1.05, 1.8),  # the lowest loss within NEAR_FASTEST: where the walk starts
        (8, 24): (1.08, 1.5),  # within a step of the start, but only 17 % better
        (16, 8): (1.11, 0.9),  # 6 % slower, half the loss: the first step
        (16, 16): (1.13, 0.8),  # a further 2 % for 11 % less loss: not worth it
        (24, 16): (1.14, 0.5),  # more than a step from the start, 44 % better than the first step: the second
        (24, 8): (1.16, 0.3),  # 2 % more for 40 % less: the third, past NEAR_FASTEST squared but in the limit
        (32, 8): (1.3, 0.1),  # better still, but past the limit (KNEE_LIMIT)
    }
    plans = {k: strategies.plan_from_widths(a, {"g0": 8, "g1": k[0], "g2": k[1], "g3": 8}, rank) for k in table}

    def loss(plan):
        w = plan.widths(a)
        return table[(w["g1"], w["g2"])][1]

    ev = Evaluator(a, CostModel(a), _StubLatency(a), loss)
    candidates = [(plans[k], 0.0, 0.0) for k in table]
    speed = {id(c): table[k][0] for c, k in zip(candidates, table, strict=True)}
    start = candidates[1]

    def widths_of(c):
        w = c[0].widths(a)
        return w["g1"], w["g2"]

    limit = 1.0 * strategies.KNEE_LIMIT
    assert widths_of(strategies._knee(a, ev, candidates, speed, start, limit)) == (24, 8)
    assert widths_of(strategies._knee(a, ev, candidates, speed, start, 1.15)) == (24, 16)  # the limit holds
    assert widths_of(strategies._knee(a, ev, candidates, speed, start, 1.12)) == (16, 8)
    assert widths_of(strategies._knee(a, ev, candidates, speed, start, 1.08)) == (8, 16)
    # a plan whose loss is no better never moves the answer, however fast
    flat = Evaluator(a, CostModel(a), _StubLatency(a), lambda plan: 1.0)
    assert strategies._knee(a, flat, candidates, speed, start, limit) is start


def test_the_knee_crosses_a_gap_among_the_plans_timed_near_the_fastest(digits):
    """The plans near the fastest are a handful timed as deployed: when none lies within
    KNEE_STEP of the answer, a slower one that pays for its latency (KNEE_GAIN per KNEE_STEP,
    compounded) is still taken; one that does not pay for its distance is not (the digits CNN at
    batch 1: the nearest plan 8 % slower with 85 % less loss, and the walk stopped at 24 % raw
    accuracy)."""
    import prunepass.select.strategies as strategies

    model, a, _ = digits
    _, rank, _, _, _ = _settle_setup(a, _StubLatency(a), {g.name: 8 for g in a.prunable_groups})
    table = {  # (g1, g2): (latency as deployed, calibration loss)
        (8, 8): (1.00, 2.0),  # the fastest and the start
        (8, 16): (1.09, 1.6),  # 20 % less loss for 9 % more latency: does not pay (needs 30 %)
        (16, 8): (1.12, 0.4),  # 80 % less for 12 %: the steepest move, though more than a step away
        (16, 16): (1.135, 0.38),  # 5 % less than that for 1.3 % more: not worth a further move
    }
    plans = {k: strategies.plan_from_widths(a, {"g0": 8, "g1": k[0], "g2": k[1], "g3": 8}, rank) for k in table}
    ev = Evaluator(a, CostModel(a), _StubLatency(a), lambda plan: table[(plan.widths(a)["g1"], plan.widths(a)["g2"])][1])
    candidates = [(plans[k], 0.0, 0.0) for k in table]
    speed = {id(c): table[k][0] for c, k in zip(candidates, table, strict=True)}
    limit = 1.0 * strategies.KNEE_LIMIT
    got = strategies._knee(a, ev, candidates, speed, candidates[0], limit)
    assert (got[0].widths(a)["g1"], got[0].widths(a)["g2"]) == (16, 8)
    # without the good plan, the one that does not pay for its latency (20 % less for 9 % more: it needs 30 %) is left alone
    assert strategies._knee(a, ev, candidates[:2], speed, candidates[0], limit) is candidates[0]
    # the steepest move first: (16, 16) has the lower loss, (16, 8) the better rate, and from
    # (16, 8) a further 5 % less loss is not worth a move
    rate = strategies._knee_rate
    assert rate(2.0, 0.4, 1.0, 1.12) > rate(2.0, 0.38, 1.0, 1.135) > rate(2.0, 1.6, 1.0, 1.09)
    assert rate(2.0, 1.5, 1.0, 1.07) == pytest.approx(rate(1.5, 1.125, 1.07, 1.07 ** 2))  # compounded
    assert rate(2.0, 1.0, 1.0, 0.99) == float("inf") and rate(2.0, 0.0, 1.0, 1.1) > 100


class _WidthStub(_FlatStub):
    """The digits CNN at batch 1 where only g0's width costs time (the others are free): latency
    is far from a line in FLOPs.  Records every timing in ``cache`` by widths, as the oracle does."""

    def __call__(self, plan):
        w = plan.widths(self.analysis)
        size = {g.name: g.size for g in self.analysis.prunable_groups}
        latency = 0.7 + 0.3 * w["g0"] / size["g0"]
        self.cache[tuple(w[g.name] for g in self.analysis.prunable_groups)] = latency
        return latency


def _timed_on_the_way(a, stub, loss):
    """The narrowest plan (8 channels a group) and what a search has timed on its way to it: the
    original and each group alone widened.  Returns ``(rank, options, plan, value, evaluator,
    points)``."""
    import prunepass.select.strategies as strategies

    names = [g.name for g in a.prunable_groups]
    size = {g.name: g.size for g in a.prunable_groups}
    floor = {n: 8 for n in names}
    _, rank, options, plan, value = _settle_setup(a, stub, floor)
    ev = Evaluator(a, CostModel(a), stub, loss)
    full = strategies.plan_from_widths(a, size, rank)
    for p in [plan, full] + [strategies.plan_from_widths(a, {**floor, n: size[n]}, rank) for n in names]:
        stub(p)
    points = [(float(ev.cost.flops()), stub(full)), (float(ev.cost.flops(floor)), stub(plan))]
    return rank, options, plan, value, ev, points


def test_an_unreachable_goal_finds_plans_near_the_fastest_by_their_widths(digits):
    """Which plans of a small space are about as fast as the fastest is told by a latency fit on
    the widths of the plans timed so far, not by a line in FLOPs: here only g0 costs time, so
    wide g1..g3 are free, and the answer keeps them (a FLOPs line rules every wide plan out)."""
    import itertools

    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _WidthStub(a, 1.0)

    def loss(plan):
        w = plan.widths(a)
        return 1.0 / (w["g1"] * min(w["g2"], w["g3"]))

    rank, options, plan, value, ev, points = _timed_on_the_way(a, stub, loss)
    names = [g.name for g in a.prunable_groups]
    size = {g.name: g.size for g in a.prunable_groups}
    floor = {n: 8 for n in names}
    fit = strategies._width_latency_fit(a, ev, names)
    assert fit is not None and abs(fit({**floor, "g1": size["g1"]}) - stub(plan)) < 0.01  # g1 is free
    every = [strategies.plan_from_widths(a, dict(zip(options, c, strict=True)), rank)
             for c in itertools.product(*options.values())]
    fastest = min(stub(p) for p in every)
    as_fast = [p for p in every if stub(p) <= fastest * strategies.NEAR_FASTEST]
    best = min(loss(p) for p in as_fast)
    # the reach of the unreachable goal: plans placed by the fit are found, by the FLOPs line not
    reach = dict(window=(0.0, 1.0), confirm=False)
    by_fit = strategies._small_space_candidates(a, ev, rank, options, fastest * strategies.NEAR_FASTEST, points, [],
                                                predict=fit, **reach)
    assert by_fit and loss(by_fit[0][0]) == best < loss(plan) / 16
    by_flops = strategies._small_space_candidates(a, ev, rank, options, fastest * strategies.NEAR_FASTEST, points, [],
                                                  **reach)
    assert all(loss(f[0]) > best for f in by_flops)
    got = strategies._pick_latency_candidate(a, ev, rank, options, ChannelConstraint(step=8),
                                             (plan, stub(plan), value), 0.5, 0.03, points, [])
    assert stub(got[0]) <= fastest * strategies.NEAR_FASTEST and loss(got[0]) == best


class _LuckyDrawStub(_WidthStub):
    """``_WidthStub`` where g1 costs time too, past 16 channels, and every short timing of the
    narrowest plan comes out ``luck`` times its true latency (the fastest of many single draws
    at batch 1); longer timings (``measure`` with ``runs``) and deployed timings are true."""

    def __init__(self, a, luck: float, g1_cost: float) -> None:
        super().__init__(a, 1.0)
        self.luck, self.g1_cost = luck, g1_cost

    def true(self, plan):
        w = plan.widths(self.analysis)
        return super().__call__(plan) + self.g1_cost * max(w["g1"] - 16, 0) / 16

    def __call__(self, plan):
        w = plan.widths(self.analysis)
        narrowest = all(w[g.name] == 8 for g in self.analysis.prunable_groups)
        return self.true(plan) * (self.luck if narrowest else 1.0)

    def measure(self, plan, runs=None):
        return self.true(plan) if runs else self(plan)

    def deployed_ratios(self, plans):
        return [self.true(p) / self.true(Plan.from_keep(self.analysis, {})) for p in plans]


@pytest.mark.parametrize("luck", [0.9, 1.0])
def test_an_unreachable_goal_reaches_the_knee_past_a_lucky_draw(digits, luck):
    """The plans near the fastest are sought from a longer timing of the fastest plan, not from
    its luckiest single draw: here the most accurate plan the knee may take (g1 at 32, 9 %
    slower than the fastest, 44 % less loss than at 24) was shut out by a draw 10 % low (the
    digits CNN at batch 1: 0.0192 against 0.0215 for the same plan timed again)."""
    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _LuckyDrawStub(a, luck, 0.08)

    def loss(plan):
        w = plan.widths(a)
        return 1.0 / (w["g1"] ** 2 * min(w["g2"], w["g3"]))

    rank, options, plan, value, ev, points = _timed_on_the_way(a, stub, loss)
    got = strategies._pick_latency_candidate(a, ev, rank, options, ChannelConstraint(step=8),
                                             (plan, stub(plan), value), 0.5, 0.03, points, [])
    fastest = stub.true(plan)
    assert got[0].widths(a)["g1"] == 32 and loss(got[0]) == 1.0 / (32 ** 2 * 64)
    assert stub.true(got[0]) <= fastest * strategies.KNEE_LIMIT


def test_small_space_is_ranked_whole_by_calibration_loss(digits, monkeypatch):
    """A search space of a few hundred plans is ranked whole by calibration loss (among the
    plans whose FLOPs put them near the goal); the lowest-loss plans under the goal are timed
    and returned, the best one first.  The loss here is not additive in the groups (g1 and the
    narrower of g2 / g3 count together), which is where summed importance misjudges a plan."""
    import itertools

    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _StubLatency(a)

    def loss(plan):  # g3 wider than g2 changes nothing, but for a rounding-level drift
        w = plan.widths(a)
        return 1.0 / (w["g1"] * min(w["g2"], w["g3"])) * (1 - 1e-6 * w["g3"])

    def tied(x, y):
        return abs(x - y) <= strategies.LOSS_TIE * abs(y)

    ev = Evaluator(a, CostModel(a), stub, loss)
    _, rank, options, plan, _ = _settle_setup(a, stub, {"g0": 16, "g1": 32, "g2": 64, "g3": 64})
    full = float(ev.cost.flops())
    half = strategies.plan_from_widths(a, {"g0": 8, "g1": 16, "g2": 32, "g3": 32}, rank)
    points = [(full, stub(plan)), (float(ev.cost.flops(half.widths(a))), stub(half))]
    goal = 0.6 * stub(plan)
    fits = strategies._small_space_candidates(a, ev, rank, options, goal, points, [])
    every = [strategies.plan_from_widths(a, dict(zip(options, c, strict=True)), rank)
             for c in itertools.product(*options.values())]
    best = min((p for p in every if stub(p) <= goal), key=loss)
    assert 1 <= len(fits) <= strategies.SMALL_SPACE_FITS and all(f[1] <= goal for f in fits)
    assert tied(loss(fits[0][0]), loss(best))
    losses = [loss(f[0]) for f in fits]
    assert losses == sorted(losses) and not any(tied(x, y) for x, y in zip(losses, losses[1:], strict=False))  # no ties
    # of the plans with the best loss, to LOSS_TIE (g3 wider than g2 changes nothing), the fewest FLOPs
    flops = [ev.cost.flops(p.widths(a)) for p in every if tied(loss(p), loss(best))]
    assert ev.cost.flops(fits[0][0].widths(a)) == min(flops) and len(flops) > 1
    # the summed-importance MILP's answer at this goal costs more loss
    milp, _ = knapsack_plan(a, magnitude_scores(model, a), Target.parse("flops=50%"), Evaluator(a), ChannelConstraint(step=8))
    assert loss(milp) > loss(best)
    # a larger space, or no loss function: nothing is enumerated
    assert strategies._small_space_candidates(a, Evaluator(a, CostModel(a), stub), rank, options, goal, points, []) == []
    monkeypatch.setattr(strategies, "SMALL_SPACE", 100)
    assert strategies._small_space_candidates(a, ev, rank, options, goal, points, []) == []


def test_small_space_calls_share_their_timings(digits, monkeypatch):
    """Two enumerations of the small space (the unreachable goal's two reaches) share a set of
    the plans already timed: their cached timings do not count against ``SMALL_SPACE_TIMINGS``
    again, so the second one gets as far again down the ranking."""
    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _StubLatency(a)

    def loss(plan):
        w = plan.widths(a)
        return 1.0 / (w["g0"] * w["g1"] * w["g2"] * w["g3"])

    ev = Evaluator(a, CostModel(a), stub, loss)
    _, rank, options, plan, _ = _settle_setup(a, stub, {"g0": 16, "g1": 32, "g2": 64, "g3": 64})
    points = [(float(ev.cost.flops()), stub(plan))]
    monkeypatch.setattr(strategies, "SMALL_SPACE_TIMINGS", 3)
    goal = 0.3 * stub(plan)  # nothing near it fits: every timing is spent
    for shared, expected in ((set(), 6), (None, None)):
        first = strategies._small_space_candidates(a, ev, rank, options, goal, points, [], window=(0.0, 1.5),
                                                   confirm=False, timed=shared)
        second = strategies._small_space_candidates(a, ev, rank, options, goal, points, [], window=(0.0, 1.5),
                                                    confirm=False, timed=shared)
        assert first == [] and second == []
        if shared is not None:
            assert len(shared) == expected


class _HighDrawStub(_StubLatency):
    """Every plan's one search timing lands 4 % over its latency; a longer measurement gets it."""

    def __call__(self, plan):
        return 1.04 * super().__call__(plan)

    def measure(self, plan, runs=None):
        return super().__call__(plan)


def test_small_space_times_a_near_miss_again_before_ruling_it_out(digits):
    """The lowest-loss plan under the goal is timed once 4 % over it (one noisy draw): it is
    timed again with more runs and still wins, instead of a plan with more loss."""
    import itertools

    import prunepass.select.strategies as strategies

    model, a, _ = digits
    stub = _HighDrawStub(a)

    def loss(plan):
        w = plan.widths(a)
        return 1.0 / (w["g0"] * w["g1"] * min(w["g2"], w["g3"]))

    ev = Evaluator(a, CostModel(a), stub, loss)
    _, rank, options, plan, _ = _settle_setup(a, stub, {"g0": 16, "g1": 32, "g2": 64, "g3": 64})
    true = _StubLatency.__call__
    full = float(ev.cost.flops())
    half = strategies.plan_from_widths(a, {"g0": 8, "g1": 16, "g2": 32, "g3": 32}, rank)
    points = [(full, true(stub, plan)), (float(ev.cost.flops(half.widths(a))), true(stub, half))]
    every = [strategies.plan_from_widths(a, dict(zip(options, c, strict=True)), rank)
             for c in itertools.product(*options.values())]
    under = [p for p in every if true(stub, p) <= 0.6 * true(stub, plan)]
    best = min(under, key=lambda p: (loss(p), ev.cost.flops(p.widths(a))))
    goal = true(stub, best)  # its one draw is 4 % over this goal
    assert stub(best) > goal
    fits = strategies._small_space_candidates(a, ev, rank, options, goal, points, [])
    assert fits and fits[0][0].widths(a) == best.widths(a) and fits[0][1] == pytest.approx(goal)
    assert all(f[1] <= goal for f in fits)


class _OverStub(_BiasedStub):
    """The digits CNN where g2 costs 0.05 and g3 0.01 per 8 channels (g0, g1 nothing)."""

    def __call__(self, plan):
        w = plan.widths(self.analysis)
        return 0.2 + 0.05 * (w["g2"] / 8 - 1) + 0.01 * (w["g3"] / 8 - 1)


@pytest.mark.parametrize("over", [0.045, 0.015])
def test_an_answer_over_the_goal_gives_way_to_a_costlier_plan_in_the_band(digits, over):
    """An answer inside the 7 % band keeps its accuracy: a neighbour nearer the goal may replace
    it only at most LOSS_SLACK worse.  Over the goal by more than the settle band (4.5 %) the
    target comes first: the neighbour one g3 step narrower (+1.8 %, 12.5 % more loss) wins.
    Within the settle band (1.5 % over) the answer stays."""
    from prunepass.select.strategies import _settle_neighbours

    model, a, _ = digits
    stub = _OverStub(a, 1.0)
    widths = {"g0": 8, "g1": 16, "g2": 32, "g3": 32}
    _, rank, options, plan, value = _settle_setup(a, stub, widths)
    ev = Evaluator(a, CostModel(a), stub, lambda p: 1.0 + (64 - p.widths(a)["g3"]) / 32)
    start = stub(plan)  # 0.38
    goal = start / (1 + over)
    got, deployed, _ = _settle_neighbours(a, ev, rank, options, (plan, start, value), start, goal, [])
    if over > 0.025:
        assert got.widths(a)["g3"] == 24 and deployed == pytest.approx(0.37)
        assert ev.loss(got) > 1.05 * ev.loss(plan)
    else:
        assert got.widths(a)["g3"] == 32 and got.widths(a)["g2"] == 32 and deployed == pytest.approx(start)


def test_a_neighbour_nearer_the_goal_does_not_cost_far_more_loss_than_one_in_the_band(digits):
    """An answer out of the band (9 % under) moves into it, but not to the plan nearest the goal
    when that costs far more calibration loss (SETTLE_LOSS_SLACK) than another plan within
    LATENCY_BAND: the one g3 step wider (6.6 % under, the answer's loss) wins over the plans in
    the settle band (six times the loss).  (The digits CNN at batch 64 and 40 %: 8,16,32,40 at
    -3.2 % moved to 16,8,24,40 at +3 % with twice its loss.)  At the same loss everywhere, the
    plan in the settle band still wins."""
    from prunepass.select.strategies import LATENCY_BAND, SETTLE_BAND, SETTLE_LOSS_SLACK, _settle_neighbours

    model, a, _ = digits
    stub = _OverStub(a, 1.0)
    widths = {"g0": 8, "g1": 16, "g2": 32, "g3": 32}
    _, rank, options, plan, value = _settle_setup(a, stub, widths)
    start = stub(plan)  # 0.38
    goal = start / 0.91

    def loss(p):
        w = p.widths(a)
        return 0.5 if w["g2"] <= 32 and w["g3"] <= 40 else 3.0

    ev = Evaluator(a, CostModel(a), stub, loss)
    got, deployed, _ = _settle_neighbours(a, ev, rank, options, (plan, start, value), start, goal, [])
    assert (got.widths(a)["g2"], got.widths(a)["g3"]) == (32, 40) and deployed == pytest.approx(0.39)
    assert goal * (1 - LATENCY_BAND) <= deployed and loss(got) < 3.0 / (1 + SETTLE_LOSS_SLACK)
    # the same loss everywhere: the plan nearest the goal in the settle band wins, as before
    flat = Evaluator(a, CostModel(a), stub, lambda p: 1.0)
    got, deployed, _ = _settle_neighbours(a, flat, rank, options, (plan, start, value), start, goal, [])
    assert abs(deployed / goal - 1) <= SETTLE_BAND


def test_an_answer_over_the_latency_slack_is_timed_again_before_it_is_called_missed(digits):
    """One very busy spell can lift an answer's estimate over the slack; the answer is timed once
    more as deployed and judged on all its timings before the target is declared missed (and
    strict=True raises).  An answer within the slack is not timed again."""
    from prunepass.select.strategies import LATENCY_BAND, _time_again_if_over

    model, a, _ = digits
    plan = uniform_plan(a, 0.5, constraint=ChannelConstraint(step=8))

    class Again(Evaluator):
        calls = 0

        def deployed(self, plans):
            self.calls += 1
            return [0.61]

    ev = Again(a, CostModel(a), _StubLatency(a))
    within = 0.60 * (1 + LATENCY_BAND) - 1e-3
    assert _time_again_if_over(ev, plan, within, 0.60) == within and ev.calls == 0
    assert _time_again_if_over(ev, plan, 0.65, 0.60) == 0.61 and ev.calls == 1

    class Cannot(Evaluator):
        def deployed(self, plans):
            return None

    assert _time_again_if_over(Cannot(a, CostModel(a), _StubLatency(a)), plan, 0.65, 0.60) == 0.65


def test_a_settled_answer_still_over_the_slack_is_settled_once_more(digits):
    """A busy spell that starts after the settle step lifts the answer's deployed estimate past
    the slack: it is timed once more and, still over, settled again from that estimate (narrowed
    into the band) before any miss is declared (convnext at 50 %: declared missed at +11 %).  An
    answer within the slack is left alone, untimed."""
    from prunepass.select.strategies import LATENCY_BAND, SETTLE_BAND, _settle_again_if_over, kept_value

    model, a, _ = digits
    stub = _BiasedStub(a, 1.0)
    start = {"g0": 16, "g1": 32, "g2": 48, "g3": 64}
    ev, rank, options, plan, value = _settle_setup(a, stub, start)
    goal = stub(plan) * ev.base("latency") / stub(Plan.from_keep(a, {}))  # the answer fits as searched
    points = [(float(ev.cost.flops()), ev.base("latency")), (float(ev.cost.flops(start)), goal)]
    stub.bias = 1.15  # the spell: every deployed timing from now on runs 15 % slow
    got, deployed, got_value = _settle_again_if_over(a, ev, rank, options, (plan, goal, value), goal, points, [])
    assert stub.deployed_calls == 0  # within the slack: not timed again
    assert got is plan and deployed == goal
    got, deployed, got_value = _settle_again_if_over(a, ev, rank, options, (plan, 1.15 * goal, value), goal, points,
                                                     [])
    assert stub.deployed_calls >= 2  # timed once more, then settled
    assert abs(deployed / goal - 1) <= SETTLE_BAND + 0.01 and deployed <= goal * (1 + LATENCY_BAND)
    assert ev.cost.flops(got.widths(a)) < ev.cost.flops(plan.widths(a))  # a narrower network
    assert deployed == pytest.approx(ev.deployed([got])[0])
    assert got_value == pytest.approx(sum(kept_value(rank[k], w) for k, w in got.widths(a).items() if k in rank))


def test_deployed_estimate_aims_between_quiet_and_the_heavy_load(digits):
    """A shared VM switches between a quiet state and busy ones (the original 1.3 to 2.5 times
    slower) for seconds to minutes; a small model's ratio rises with the load, about in
    proportion.  A plan's estimate lies STATE_AIM of the way from its ratio at load 1 to its
    ratio at the heavy load (the 80th percentile of the run's loads), by the slope its own rounds
    show, else the other plans'; before any slope is seen the estimate is the plain median."""
    from prunepass.select.targets import STATE_AIM, LatencyOracle

    def aimed(quiet, gap):
        return quiet * (1 + STATE_AIM * (gap - 1))

    model, a, _ = digits
    oracle = LatencyOracle(a)
    both = uniform_plan(a, 0.5, constraint=ChannelConstraint(step=8))
    quiet_only = uniform_plan(a, 0.25, constraint=ChannelConstraint(step=8))
    heavy = uniform_plan(a, 0.75, constraint=ChannelConstraint(step=8))
    key_both, key_quiet = oracle._key(both), oracle._key(quiet_only)
    oracle.deployed_rounds[key_quiet] = [(0.90, 0.60), (0.91, 0.62), (0.92, 0.61)]
    assert oracle.state_gap() is None and oracle.state_swing(quiet_only) == 0.0
    assert oracle.deployed_estimate(quiet_only) == pytest.approx(0.61)  # no state change seen yet
    # quiet at 0.90 ms (load 1), busy at 1.35 ms (load 1.5) and 5 % slower: a slope of 0.1 per unit of load
    oracle.deployed_rounds[key_both] = [(0.90, 0.40), (1.35, 0.42), (0.90, 0.40), (1.35, 0.42)]
    assert oracle.state_slope(both) == pytest.approx(0.1) and oracle.heavy_load() == pytest.approx(1.5)
    assert oracle.state_gap(both) == pytest.approx(1.05)
    assert oracle.state_values(both) == (pytest.approx(0.40), pytest.approx(0.42))
    assert oracle.deployed_estimate(both) == pytest.approx(aimed(0.40, 1.05)) and 0.41 < aimed(0.40, 1.05) < 0.42
    # the busy state lies above the estimate by the rest of the gap, the quiet one below by STATE_AIM of it
    assert oracle.state_swing(both) == pytest.approx(0.42 / aimed(0.40, 1.05) - 1)
    assert oracle.state_swing(both, above=False) == pytest.approx(1 - 0.40 / aimed(0.40, 1.05))
    # seen quiet only: its rounds at load 1 moved up by the slope the other plan showed
    q = statistics.median(r / (1 + 0.1 * (t / 0.9 - 1)) for t, r in oracle.deployed_rounds[key_quiet])
    assert oracle.deployed_estimate(quiet_only) == pytest.approx(aimed(q, 1.05))
    # the machine turns heavier (the original 2.4 times its quiet time): every estimate is aimed
    # toward that load, not to where the plan's own busy rounds happened to fall
    oracle.deployed_rounds[oracle._key(heavy)] = [(2.16, 0.50)] * 5
    assert oracle.heavy_load() == pytest.approx(2.4) and oracle.state_gap(both) == pytest.approx(1.14)
    assert oracle.deployed_estimate(both) == pytest.approx(aimed(0.40, 1.14))
    oracle.deployed_rounds[key_quiet] = [(1.35, 0.66)]  # seen busy only: brought back to load 1 first
    assert oracle.deployed_estimate(quiet_only) == pytest.approx(aimed(0.66 / 1.05, 1.14))


def test_settle_band_narrows_with_the_state_swing(digits):
    """An answer may stay SETTLE_BAND off its goal on a steady machine, less when the machine's
    state moves its latency, so that a later measurement in either state stays in the 7 % band."""
    from prunepass.select.strategies import LATENCY_BAND, MIN_SETTLE_BAND, SETTLE_BAND, STATE_MARGIN, _settle_band

    model, a, _ = digits
    plan = uniform_plan(a, 0.5, constraint=ChannelConstraint(step=8))

    class Swinging(Evaluator):
        swing = 0.0

        def state_swing(self, plan, above=True):
            return self.swing

    ev = Swinging(a, CostModel(a), _StubLatency(a))
    assert _settle_band(ev, plan) == SETTLE_BAND
    ev.swing = 0.04
    assert _settle_band(ev, plan) == pytest.approx(LATENCY_BAND - STATE_MARGIN - 0.04)
    assert _settle_band(ev, plan) < SETTLE_BAND
    ev.swing = 0.06
    assert _settle_band(ev, plan) == MIN_SETTLE_BAND
    assert Evaluator(a, CostModel(a), _StubLatency(a)).state_swing(plan) == 0.0  # oracles that cannot tell


def test_fill_spends_latency_left_under_the_goal(resnet):
    """The MILP's FLOPs proxy can land far under a latency goal; the fill step widens groups
    (most kept importance per latency first) while the measured latency still fits."""
    from prunepass.select.strategies import _fill_latency, kept_value, plan_from_widths, ranking_scores

    model, a, s = resnet
    stub = _StubLatency(a)
    ev = Evaluator(a, CostModel(a), stub)
    rank = ranking_scores(s)
    c = ChannelConstraint(step=8)
    options = {g.name: allowed_widths(g, c) for g in a.prunable_groups if g.name in rank}
    low = {name: opts[len(opts) // 3] for name, opts in options.items()}
    plan = plan_from_widths(a, low, rank)
    value = sum(kept_value(rank[k], w) for k, w in low.items())
    start = stub(plan)
    goal = start * 1.25
    points = [(float(ev.cost.flops()), stub(Plan.from_keep(a, {}))), (float(ev.cost.flops(low)), start)]
    history: list = []
    new_plan, achieved, new_value = _fill_latency(a, ev, rank, options, (plan, start, value), goal, points, history,
                                                  max_measurements=40)
    assert achieved == pytest.approx(stub(new_plan))
    assert start < achieved <= goal
    assert new_value > value
    widths = new_plan.widths(a)
    assert all(widths[k] >= low[k] for k in low) and any(widths[k] > low[k] for k in low)
    assert len(history) <= 40


def test_latency_knapsack_prefers_lower_calibration_loss(resnet):
    """With a loss function the latency search compares its finalists (MILP answer, best
    uniform plan, loss-guided widenings) by loss: never worse than the loss-blind answer."""
    model, a, s = resnet
    favoured = a.prunable_groups[0].name

    def loss(plan):  # a loss that only cares about the first group being wide
        return 1.0 - plan.widths(a)[favoured] / a.group(favoured).size

    target = Target.parse("latency=70%")
    blind_plan, blind = knapsack_plan(a, s, target, Evaluator(a, CostModel(a), _StubLatency(a)),
                                      ChannelConstraint(step=8))
    seen: list = []

    def counting_loss(plan):
        seen.append(plan)
        return loss(plan)

    plan, rep = knapsack_plan(a, s, target, Evaluator(a, CostModel(a), _StubLatency(a), counting_loss),
                              ChannelConstraint(step=8))
    assert rep.met and rep.achieved <= 0.7 * rep.base
    assert seen, "the loss function was never consulted"
    assert loss(plan) <= loss(blind_plan)


def test_latency_oracle_reuses_the_reference_session_and_caps_confirmation_runs(digits):
    """Every candidate is timed between two timings of the unpruned model: its onnxruntime
    session is built once; confirmation timings are capped near REMEASURE_SECONDS."""
    from prunepass.select.targets import REMEASURE_SECONDS, LatencyOracle

    model, a, s = digits
    oracle = LatencyOracle(a, runs=5, warmup=1)
    plan = uniform_plan(a, 0.5, constraint=ChannelConstraint(step=8))
    first = oracle.measure(plan)
    template = oracle._template
    assert template is not None and oracle.mode == "fast"
    session = template._reference[1]
    second = oracle.measure(plan)
    assert template._reference[1] is session  # not rebuilt for the second candidate
    assert first > 0 and second > 0
    assert oracle.long_runs() == max(5, min(200, int(REMEASURE_SECONDS * 1000.0 / oracle._reference)))
    oracle._reference = 50.0  # a 50 ms model: 1.5 s / 50 ms = 30 runs, but never fewer than `runs`
    assert oracle.long_runs() == 30
    oracle.runs = 40
    assert oracle.long_runs() == 40


def test_paired_latency_times_models_in_turn_and_ranks_them():
    """Run-by-run interleaved timing: every model gets its runs, and a model doing ~1000x the
    work of another measures slower in both statistics."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from prunepass.onnx_backend import make_session, paired_latency

    def matmul_model(n: int) -> onnx.ModelProto:
        w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    sessions = []
    for n in (8, 256):
        sess = make_session(matmul_model(n), 1)
        sessions.append((sess, {"x": np.ones((n, n), dtype=np.float32)}))
    small, big = paired_latency(sessions, runs=30, warmup=2)
    assert small.runs == big.runs == 30
    assert big.p10 > small.p10 and big.median > small.median
    with pytest.raises(Exception, match="runs must be >= 3"):
        paired_latency(sessions, runs=2)


def test_paired_rounds_last_long_enough_for_small_models():
    """A model of microseconds gets many runs per round (about min_seconds), capped by
    max_runs, and never fewer than runs."""
    import onnx
    from onnx import TensorProto, helper

    from prunepass.onnx_backend import make_session, paired_rounds

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model: onnx.ModelProto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = make_session(model, 1)
    pair = [(sess, {"x": np.ones(4, dtype=np.float32)})] * 2
    rounds = paired_rounds(pair, rounds=3, runs=10, min_seconds=0.05, max_runs=300)
    assert len(rounds) == 3 and all(len(r) == 2 for r in rounds)
    assert all(st.runs == 300 for r in rounds for st in r)  # a Relu of 4 floats: 0.05 s is >> 300 runs
    short = paired_rounds(pair, rounds=1, runs=10, min_seconds=0.0)
    assert short[0][0].runs == 10


def test_deployed_ratios_time_full_exports_against_the_original(digits):
    """The answer's check as shipped: full exports of the plans, timed together in turn with the
    original's; the unpruned plan measures ~1, a heavily pruned one less, sessions are reused."""
    from prunepass.select.targets import REF_SESSIONS, LatencyOracle

    model, _, _ = digits
    # batch 64: at batch 1 per-operator overhead leaves even a 90 % prune at 0.91 of the original
    # on some CPUs (an AVX-512 Xeon), too close to tell from noise
    a = analyze(model, (torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)),))
    oracle = LatencyOracle(a, runs=20, warmup=2)
    heavy = uniform_plan(a, 0.9, constraint=ChannelConstraint(step=8))
    same, small = oracle.deployed_ratios([Plan.from_keep(a, {}), heavy], rounds=3)
    assert 0.75 < same < 1.33
    assert small < same
    assert len(oracle._deployed) == 2 and len(oracle._deployed_refs) == REF_SESSIONS
    protos = dict(oracle._deployed_protos)
    oracle.deployed_ratios([heavy], rounds=1)
    assert oracle._deployed_protos == protos  # no re-export for a plan timed before
    assert len(oracle._deployed[oracle._key(heavy)]) == 2  # but one more session (each is a draw)
    # a plan timed again is judged on all its rounds (one batch is one draw of the machine's state)
    assert len(oracle.deployed_rounds[oracle._key(heavy)]) == 4
    ev = Evaluator(a, CostModel(a), oracle)
    (value,) = ev.deployed([heavy])  # on the search's scale: a fraction of base("latency")
    assert value / ev.base("latency") == pytest.approx(oracle.deployed_estimate(heavy))
    assert 0 < value / ev.base("latency") < 0.9 * same


def test_latency_targets_round_widths_to_the_latency_step(digits, monkeypatch):
    """A latency target without a step of its own rounds widths to multiples of 8;
    ``PRUNEPASS_LATENCY_STEP`` changes that (16 suits AVX-512's channel block); a step the user
    gives is kept."""
    import prunepass.api as api

    model, a, _ = digits
    seen = []

    def spy(analysis, scores, target, evaluator, constraint=None, **kw):
        seen.append(constraint)
        raise RuntimeError("stop")

    monkeypatch.setattr(api, "knapsack_plan", spy)
    monkeypatch.delenv("PRUNEPASS_LATENCY_STEP", raising=False)
    scores = magnitude_scores(model, a)

    def step_used(constraint=None):
        with pytest.raises(RuntimeError, match="stop"):
            api.select_plan(a, scores, Target.parse("latency=50%"), constraint=constraint,
                            evaluator=Evaluator(a, CostModel(a), _StubLatency(a)))
        return seen[-1].step

    assert api.latency_step() == 8 and step_used() == 8
    assert step_used(ChannelConstraint(step=4, absolute_min=4)) == 4  # the user's step stands
    monkeypatch.setenv("PRUNEPASS_LATENCY_STEP", "16")
    assert step_used() == 16
    g1 = next(g for g in a.prunable_groups if g.name == "g1")
    assert allowed_widths(g1, seen[-1]) == [16, 32]
    monkeypatch.setenv("PRUNEPASS_LATENCY_STEP", "sixteen")
    with pytest.raises(ValueError, match="PRUNEPASS_LATENCY_STEP must be a positive whole number"):
        api.latency_step()


class _BlockStub(_BiasedStub):
    """Deployed timings of a machine whose channel block is 16 (AVX-512's NCHWc): a group whose
    width is not a multiple of 16 adds ``penalty`` of the original's time (layout conversions)."""

    def __init__(self, a, penalty: float) -> None:
        super().__init__(a, 1.0)
        self.penalty = penalty

    def __call__(self, plan):
        widths = plan.widths(self.analysis)
        return 0.2 + self.cost.flops(widths) / self.cost.flops() + self.penalty * sum(w % 16 != 0 for w in widths.values())


@pytest.mark.parametrize("penalty,step", [(0.05, 16), (0.0, 8)])
def test_latency_step_is_probed_on_the_deployed_model(resnet, monkeypatch, penalty, step):
    """Without a step of its own a latency target times the networks with every channel group at
    8 and at 16 channels as deployed and takes 16 only when it is clearly faster (8-wide groups
    slow on this machine); the search's report says which and why, and the plan follows it."""
    from prunepass.api import PROBE_MARGIN, probe_latency_step, select_plan

    monkeypatch.delenv("PRUNEPASS_LATENCY_STEP", raising=False)
    model, a, s = resnet
    stub = _BlockStub(a, penalty)
    ev = Evaluator(a, CostModel(a), stub)
    found = probe_latency_step(a, ev)
    assert found["step"] == step and found["source"] == "probe" and stub.deployed_calls == 1
    assert (found["probe"][16] < found["probe"][8] * (1 - PROBE_MARGIN)) == (step == 16)
    plan, rep = select_plan(a, s, Target.parse("latency=70%"), evaluator=ev)
    assert rep.latency_step["step"] == step
    assert all(w % step == 0 or w == a.group(n).size for n, w in plan.widths(a).items())
    # a constraint's step or PRUNEPASS_LATENCY_STEP is not probed; a stand-in without deployed timing is not either
    calls = stub.deployed_calls
    assert probe_latency_step(a, ev, ChannelConstraint(step=4)) == {"step": 4, "source": "constraint"}
    monkeypatch.setenv("PRUNEPASS_LATENCY_STEP", "32")
    assert probe_latency_step(a, ev) == {"step": 32, "source": "PRUNEPASS_LATENCY_STEP"}
    assert stub.deployed_calls == calls
    monkeypatch.delenv("PRUNEPASS_LATENCY_STEP")
    assert probe_latency_step(a, Evaluator(a, CostModel(a), _StubLatency(a)))["step"] == 8


def test_head_count_groups_ignore_the_channel_step():
    """A latency target forces channel counts to multiples of 8; a head count is not a channel
    count (each head is head-size channels), so every head count stays allowed."""
    model, inputs = models.get("vit")
    a = analyze(model, inputs)
    heads = next(g for g in a.prunable_groups if "heads" in g.tags)
    channels = next(g for g in a.prunable_groups if not g.tags and g.size >= 32)
    c = ChannelConstraint(step=8, absolute_min=2)
    assert allowed_widths(heads, c) == list(range(2, heads.size + 1))
    assert all(w % 8 == 0 or w == channels.size for w in allowed_widths(channels, c))


def test_uniform_widths_put_channel_groups_at_a_count_and_head_groups_at_their_fewest():
    from prunepass.select import uniform_widths

    model, inputs = models.get("vit")
    a = analyze(model, inputs)
    c = ChannelConstraint(step=8, absolute_min=2)
    for channels in (8, 16, 40):
        widths = uniform_widths(a.prunable_groups, c, channels)
        for g in a.prunable_groups:
            if "heads" in g.tags:
                assert widths[g.name] == 2  # the fewest heads the constraint allows
            else:
                assert widths[g.name] == min(w for w in allowed_widths(g, c) if w >= min(channels, g.size))
                assert widths[g.name] == g.size or (widths[g.name] >= channels and widths[g.name] % 8 == 0)
    kept = ChannelConstraint(step=8, rules={"heads": None})
    heads = next(g for g in a.prunable_groups if "heads" in g.tags)
    assert uniform_widths([heads], kept, 8) == {heads.name: heads.size}  # a group kept whole stays whole


def test_uniform_latency_candidate_keeps_attention_head_sizes_whole():
    """The latency search's uniform finalist cuts heads and channels by one ratio but leaves
    head sizes whole (a uniform head-size cut blurs every attention map)."""
    from prunepass.select.strategies import _uniform_at, ranking_scores

    model, inputs = models.get("vit")
    a = analyze(model, inputs)
    s = magnitude_scores(model, a)
    ev = Evaluator(a, CostModel(a), _StubLatency(a))
    plan, latency, _ = _uniform_at(a, ev, ranking_scores(s), ChannelConstraint(step=8), 0.5, [])
    widths = plan.widths(a)
    head_dims = [g for g in a.prunable_groups if "head_dim" in g.tags]
    heads = [g for g in a.prunable_groups if "heads" in g.tags]
    assert head_dims and heads
    assert all(widths[g.name] == g.size for g in head_dims)
    assert all(widths[g.name] < g.size for g in heads)
    assert latency < ev.base("latency")


def test_native_stdout_is_silenced_around_the_solver(capfd):
    """HiGHS prints debug lines from C++ straight to file descriptor 1; the knapsack's solver
    call sends them to /dev/null, and what Python prints before and after still shows."""
    import os
    import sys

    from prunepass.select.strategies import native_stdout_silenced

    print("before")
    with native_stdout_silenced():
        os.write(sys.__stdout__.fileno(), b"native noise\n")
    print("after")
    out = capfd.readouterr().out
    assert "native noise" not in out
    assert "before" in out and "after" in out
