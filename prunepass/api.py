"""The native one-call API: ``prunepass.prune(model, example_inputs, data=..., loss_fn=..., target=...)``."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunepass.analysis import Analysis, analyze
from prunepass.costs import CostModel
from prunepass.importance import (
    Scores,
    _progress,
    calibrate,
    call_model,
    default_sample_to_model_inputs,
    finetune_bn,
    magnitude_scores,
)
from prunepass.plan import Plan
from prunepass.rewrite import apply_plan
from prunepass.select.constraints import ChannelConstraint, uniform_widths, warn_unmatched_rules
from prunepass.select.recheck import needs_recheck, recheck_latency
from prunepass.select.states import StateMemory
from prunepass.select.strategies import (
    LATENCY_BAND,
    UNREACHABLE,
    SearchReport,
    evolutionary_plan,
    global_plan,
    knapsack_plan,
    ranking_scores,
    target_plan,
)
from prunepass.select.targets import BUSY_FACTOR, Evaluator, LatencyOracle, Target
from prunepass.select.uniform import uniform_plan

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "uniform", "global", "target", "knapsack", "optimal")
LATENCY_STEP = 8  # channel multiple of latency targets (see latency_step)
PROBE_STEPS = (8, 16)  # the channel multiples probe_latency_step compares (fine, coarse)
PROBE_MARGIN = 0.03  # the coarse step wins when its network runs at least this much faster
PLAN_LOSS_BATCHES = 4  # calibration batches a search may use to compare its finalists by loss
FINAL_ROUNDS = 6  # interleaved rounds of the final original-vs-pruned timing
FINAL_PAIRS = 3  # fresh (original, pruned) session pairs the rounds are shared between
FINAL_ROUND_SECONDS = 0.5  # each at least 100 runs and about this long


@dataclass
class PruneResult:
    """What :func:`prune` produced."""

    model: nn.Module
    plan: Plan
    analysis: Analysis
    report: dict[str, Any]
    onnx_path: Path | None = None
    search: SearchReport | None = None
    scores: Scores | None = field(default=None, repr=False)


def latency_step() -> int:
    """The channel multiple latency targets use when neither a constraint nor the probe sets one:
    ``PRUNEPASS_LATENCY_STEP``, else 8 (onnxruntime's NCHWc channel block on AVX2)."""
    forced = os.environ.get("PRUNEPASS_LATENCY_STEP", "").strip()
    if not forced:
        return LATENCY_STEP
    if not forced.isdigit() or int(forced) < 1:
        raise ValueError(f"PRUNEPASS_LATENCY_STEP must be a positive whole number of channels, got {forced!r}")
    return int(forced)


def latency_constraint(constraint: ChannelConstraint | None = None, step: int | None = None) -> ChannelConstraint:
    """The channel constraint a latency target searches under: ``constraint`` with ``step`` (by
    default :func:`latency_step`) when it sets no step of its own (odd channel counts run slower
    than round ones in onnxruntime's CPU kernels: a pruned network can end up slower than the
    original)."""
    if constraint is not None and constraint.step is not None:
        return constraint
    return dataclasses.replace(constraint or ChannelConstraint(), step=step or latency_step())


def probe_latency_step(analysis: Analysis, evaluator: Evaluator,
                       constraint: ChannelConstraint | None = None) -> dict[str, Any]:
    """Which channel multiple a latency target should use on this machine, for this model.

    onnxruntime's CPU kernels work on channels in blocks (NCHWc: 8 on AVX2, 16 on AVX-512); a
    layer whose channels are not a whole number of blocks leaves that path, with layout
    conversions around it.  So on an AVX-512 machine 8-channel groups can be slower than 16-channel
    ones: the zoo's mobilenet_v2 with every group at 16 channels timed 0.40 of the original, at 8
    0.54, and a step-8 search missed 50 % (+11.5 %) that step 16 reaches; resnet18 on the same
    machine is faster at 8 (0.58 against 0.62).  Which holds is a fact of the model and the
    machine, so it is measured: the networks with every channel group at 8 and at 16 channels are
    timed as deployed, and 16 is the step when it runs at least ``PROBE_MARGIN`` faster (8 is
    finer, so it wins ties).  A constraint's own step or ``PRUNEPASS_LATENCY_STEP`` skips the
    probe.  Returns ``{"step", "source", "probe": {step: latency ratio}}``."""
    if constraint is not None and constraint.step is not None:
        return {"step": int(constraint.step), "source": "constraint"}
    if os.environ.get("PRUNEPASS_LATENCY_STEP", "").strip():
        return {"step": latency_step(), "source": "PRUNEPASS_LATENCY_STEP"}
    groups = analysis.prunable_groups
    widths = {k: uniform_widths(groups, latency_constraint(constraint, k), k) for k in PROBE_STEPS}
    if len({tuple(w.values()) for w in widths.values()}) < len(PROBE_STEPS):
        return {"step": LATENCY_STEP, "source": "default (the probe's networks are the same)"}
    timed = evaluator.deployed([Plan.from_widths(analysis, w) for w in widths.values()])
    if timed is None:
        return {"step": LATENCY_STEP, "source": "default (no deployed timing)"}
    probe = {k: t / evaluator.base("latency") for k, t in zip(PROBE_STEPS, timed, strict=True)}
    fine, coarse = PROBE_STEPS
    step = coarse if probe[coarse] < probe[fine] * (1 - PROBE_MARGIN) else fine
    log.info("latency step %d: every channel group at %d channels timed %.3f of the original, at %d %.3f",
             step, coarse, probe[coarse], fine, probe[fine])
    return {"step": step, "source": "probe", "probe": probe}


def select_plan(analysis: Analysis, scores: Scores, target: Target, *, strategy: str = "auto",
                constraint: ChannelConstraint | None = None, evaluator: Evaluator | None = None,
                strict: bool = False, seed: int = 0, n_search_steps: int = 200,
                checkpoint: str | Path | None = None, unreachable: str = "knee") -> tuple[Plan, SearchReport | None]:
    """Run one strategy.  ``auto``: uniform for a ratio, knapsack for FLOPs/params/latency.
    ``unreachable`` (knapsack only): what a latency goal beyond every plan gets, ``"knee"`` or
    ``"fastest"`` (:func:`~prunepass.select.strategies.knapsack_plan`)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if unreachable not in UNREACHABLE:
        raise ValueError(f"unreachable must be one of {UNREACHABLE}, got {unreachable!r}")
    if unreachable != "knee" and strategy not in ("auto", "knapsack"):
        raise ValueError(f"unreachable={unreachable!r} is an option of the knapsack strategy; the {strategy} "
                         "strategy returns the fastest plan it found when a goal is out of reach")
    evaluator = evaluator or Evaluator(analysis)
    warn_unmatched_rules(analysis.prunable_groups, constraint, stacklevel=3)
    if target.metric == "latency":
        step = probe_latency_step(analysis, evaluator, constraint)
        plan, search = _search(analysis, scores, target, strategy, latency_constraint(constraint, step["step"]),
                               evaluator, strict, seed, n_search_steps, checkpoint, unreachable)
        if search is not None:
            search.latency_step = step
        return plan, search
    return _search(analysis, scores, target, strategy, constraint, evaluator, strict, seed, n_search_steps,
                   checkpoint, unreachable)


def _search(analysis: Analysis, scores: Scores, target: Target, strategy: str, constraint: ChannelConstraint | None,
            evaluator: Evaluator, strict: bool, seed: int, n_search_steps: int, checkpoint: str | Path | None,
            unreachable: str) -> tuple[Plan, SearchReport | None]:
    """``select_plan``'s dispatch to the strategy, under the constraint it settled."""
    if target.metric == "ratio":
        if strategy in ("auto", "uniform"):
            return uniform_plan(analysis, target.value, ranking_scores(scores), constraint), None
        if strategy == "global":
            return global_plan(analysis, scores, target.value, constraint), None
        raise ValueError(f"strategy {strategy!r} needs a FLOPs, params or latency target, not a ratio")
    if strategy in ("auto", "knapsack"):
        return knapsack_plan(analysis, scores, target, evaluator, constraint, strict=strict, unreachable=unreachable)
    if strategy == "target":
        return target_plan(analysis, scores, target, evaluator, constraint, strict=strict)
    if strategy == "optimal":
        return evolutionary_plan(analysis, scores, target, evaluator, constraint, n_search_steps=n_search_steps,
                                 seed=seed, checkpoint=checkpoint, strict=strict)
    raise ValueError(f"strategy {strategy!r} needs a ratio target (e.g. ratio=0.5)")


def prune(model: nn.Module, example_inputs: Any, *, data: Iterable | None = None,
          loss_fn: Callable[[Any, Any], torch.Tensor] | None = None, target: str | Target = "flops=50%",
          strategy: str = "auto", criterion: str = "taylor", constraint: ChannelConstraint | None = None,
          entry_point: str = "forward", calibration_steps: int | None = None, finetune_bn_steps: int | None = None,
          out_dir: str | Path | None = None, strict: bool = False, measure: bool = True, threads: int = 1,
          seed: int = 0, n_search_steps: int = 200, checkpoint: str | Path | None = None,
          show_progress: bool = False, state_memory: bool = True, unreachable: str = "knee",
          **sample_fns: Any) -> PruneResult:
    """Analyse, score, select and apply in one call.

    ``data`` + ``loss_fn(output, batch)`` give gradient importance (``criterion`` taylor,
    taylor_acc or fisher); without data the magnitude criterion is used.  ``target`` is ``ratio=0.4``,
    ``flops=50%``, ``params=5e6`` or ``latency=60%`` / ``latency=2.5`` (ms, onnxruntime on this
    machine).  ``constraint`` (:class:`~prunepass.select.ChannelConstraint`) sets the widths a
    group may take: minimum channels, a step, and ``rules`` that give matched groups their own
    constraint or keep them whole (``rules={"layer4.*": None, "head_dim": None}``).  With
    ``out_dir`` the pruned state dict, plan, ONNX file and report are written there.  A latency
    target remembers what the run saw of the machine's quiet and busy states for the next run of
    this model here, when ``measure`` is on (``prunepass.select.states``; ``state_memory=False``
    or ``PRUNEPASS_STATE_MEMORY=0`` neither reads nor writes it).  A latency goal that no plan
    reaches (per-operator overhead at batch 1) is missed with a warning; the answer is then the
    plan near the fastest where a few percent more latency stopped buying much lower calibration
    loss (``unreachable="knee"``), or the fastest plan timed (``unreachable="fastest"``).  The
    user's model is never modified."""
    t0 = time.perf_counter()
    target = Target.parse(target)
    a = analyze(model, example_inputs, entry_point)
    if data is not None and loss_fn is not None and criterion != "magnitude":
        scores = calibrate(model, a, data, loss_fn, criterion=criterion, steps=calibration_steps,
                           show_progress=show_progress, alternatives=True, **sample_fns)
    else:
        scores = magnitude_scores(model, a)
    if not sum(scores.group_totals().values()) > 0:
        warnings.warn(f"{scores.criterion} scores are all zero (does the loss have a gradient?); "
                      "falling back to weight magnitude", stacklevel=2)
        scores = magnitude_scores(model, a)
    oracle = LatencyOracle(a, threads=threads) if target.metric == "latency" else None
    memory = _state_memory(a, threads) if oracle is not None and measure and state_memory else None
    if memory is not None:
        oracle.prior = memory.prior()
    plan_loss = (_plan_loss(model, a, data, loss_fn, entry_point, sample_fns.get("sample_to_model_inputs"))
                 if data is not None and loss_fn is not None else None)
    evaluator = Evaluator(a, CostModel(a), oracle, plan_loss)
    # a latency search times plans for minutes on a large model: a bar counts the timings
    bar = _progress(None, True, f"timing plans for {target}") if oracle is not None and show_progress else None
    if bar is not None:
        oracle.progress = bar
    try:
        plan, search = select_plan(a, scores, target, strategy=strategy, constraint=constraint, evaluator=evaluator,
                                   strict=strict, seed=seed, n_search_steps=n_search_steps, checkpoint=checkpoint,
                                   unreachable=unreachable)

        def finish(plan: Plan) -> PruneResult:
            plan = lower_loss_channels(a, plan, scores, evaluator)
            pruned = apply_plan(model, a, plan, inplace=False)
            if finetune_bn_steps and data is not None:
                finetune_bn(pruned, data, steps=finetune_bn_steps, entry_point=entry_point, show_progress=show_progress,
                            **{k: v for k, v in sample_fns.items() if k == "sample_to_model_inputs"})
            report = build_report(a, plan, evaluator.cost, target, search, strategy, scores.criterion)
            return PruneResult(pruned, plan, a, report, None, search, scores)

        result = finish(plan)
        if measure or out_dir is not None:
            base_proto = _emit_and_measure(result, model, out_dir, threads, measure)
            if measure:
                result = _recheck(result, finish, evaluator, model, out_dir, threads, base_proto)
                if oracle is not None:
                    _record_states(result, oracle, memory)
                _check_band(result)
    finally:
        if bar is not None:
            bar.close()
            oracle.progress = None
    result.report["seconds"] = round(time.perf_counter() - t0, 2)
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


def lower_loss_channels(a: Analysis, plan: Plan, scores: Scores, evaluator: Evaluator) -> Plan:
    """The same widths with the channels of whichever criterion in ``scores`` (its own and its
    ``alternatives``) gives the lower calibration loss; ``plan`` itself without a loss or an
    alternative.  Same widths, same shapes, same latency: only which channels stay changes.
    The ``taylor`` criterion sums ``|w * dL/dw|`` per batch, ``taylor_acc`` takes the gradient
    of the summed loss; neither ranks better everywhere (the digits CNN, 512 plans of steps of
    8: keeping the lower-loss choice raised the mean raw test accuracy from 74.6 % to 77.5 %,
    better on 151 plans and worse on 27).  The choice is kept in ``plan.meta["channels"]``."""
    if not scores.alternatives or not evaluator.has_loss:
        return plan
    widths = plan.widths(a)
    choices = {scores.criterion: plan}
    for name, alt in scores.alternatives.items():
        choices[name] = Plan.from_widths(a, widths, ranking_scores(alt), **plan.meta)
    losses = {name: evaluator.loss(p) for name, p in choices.items()}
    best = min(losses, key=lambda n: (losses[n], n != scores.criterion))
    chosen = choices[best]
    chosen.meta["channels"] = {"criterion": best, "losses": {n: round(v, 6) for n, v in losses.items()}}
    if best != scores.criterion:
        log.info("the channels of %s for widths %s: calibration loss %.4g against %.4g", best,
                 list(widths.values()), losses[best], losses[scores.criterion])
    return chosen


def _plan_loss(model: nn.Module, a: Analysis, data: Iterable, loss_fn: Callable[[Any, Any], torch.Tensor],
               entry_point: str, to_inputs: Callable | None, batches: int = PLAN_LOSS_BATCHES
               ) -> Callable[[Plan], float] | None:
    """Mean loss of a pruned copy (eval mode, no grad) on the first calibration batches; lets a
    search compare a few finalists by what the pruning really costs.  None when ``data`` is a
    one-shot iterator (it was consumed by calibration)."""
    if iter(data) is data:
        return None
    held = list(itertools.islice(iter(data), batches))
    if not held:
        return None
    to_inputs = to_inputs or default_sample_to_model_inputs

    def loss(plan: Plan) -> float:
        pruned = apply_plan(model, a, plan, inplace=False, verify=False).eval()
        with torch.no_grad():
            return float(sum(float(loss_fn(call_model(pruned, to_inputs(b), entry_point), b)) for b in held)
                         / len(held))

    return loss


def build_report(a: Analysis, plan: Plan, cost: CostModel, target: Target, search: SearchReport | None,
                 strategy: str, criterion: str) -> dict[str, Any]:
    widths = plan.widths(a)
    return {
        "target": str(target), "strategy": search.strategy if search else strategy, "criterion": criterion,
        "met": search.met if search else True,
        "message": search.message if search else "",
        "flops": {"original": cost.flops(), "pruned": cost.flops(widths)},
        "params": {"original": cost.params(), "pruned": cost.params(widths)},
        "groups": [{"name": g.name, "size": g.size, "kept": widths[g.name], "tags": list(g.tags),
                    "modules": g.modules()[:4]} for g in a.prunable_groups],
        "search": search.to_dict() if search else None,
        "channels": plan.meta.get("channels", {"criterion": criterion}),
    }


def final_rounds(original_proto: Any, pruned_proto: Any, args: tuple, kwargs: dict, threads: int = 1) -> list:
    """``prune()``'s final timing of two ONNX models: original and pruned run by run in turn
    (both share the machine's load), ``FINAL_ROUNDS`` rounds of at least 100 runs and about
    ``FINAL_ROUND_SECONDS`` each, shared between ``FINAL_PAIRS`` pairs of sessions (two
    sessions of one model differ by up to 5 % for as long as they live, by where their buffers
    land in memory: one pair is one draw).  Returns ``[(original stats, pruned stats)]`` per
    round."""
    from prunepass.onnx_backend import example_feeds, make_session, paired_rounds

    pairs = []
    for _ in range(FINAL_PAIRS):
        pair = []
        for p in (original_proto, pruned_proto):
            sess = make_session(p, threads)
            pair.append((sess, example_feeds(sess, args, kwargs)))
        pairs.append(pair)
    return [tuple(paired_rounds(pairs[r % FINAL_PAIRS], rounds=1, runs=100, min_seconds=FINAL_ROUND_SECONDS,
                                warmup=10 if r < FINAL_PAIRS else 2, threads=threads)[0])
            for r in range(FINAL_ROUNDS)]


def _emit_and_measure(result: PruneResult, original: nn.Module, out_dir: str | Path | None, threads: int,
                      measure: bool, base_proto: Any = None) -> Any:
    """Export the pruned model (to ``out_dir/model.onnx`` when given) and, with ``measure``, time
    it against the original's export (``base_proto``, exported here when None) into
    ``report["latency"]``.  Returns the original's export (None without ``measure``)."""
    from prunepass.onnx_backend import export_onnx

    a = result.analysis
    args, kwargs = a.captured.args, a.captured.kwargs
    path = Path(out_dir) / "model.onnx" if out_dir is not None else None
    target = _entry_module(result.model, a.captured.entry_point)
    proto = export_onnx(target, args, kwargs, path)
    result.onnx_path = path
    if not measure:
        return None
    if base_proto is None:
        base_proto = export_onnx(_entry_module(original, a.captured.entry_point), args, kwargs, verify=False)
    rounds: dict[str, list[Any]] = {"original": [], "pruned": []}
    for o, p in final_rounds(base_proto, proto, args, kwargs, threads):
        rounds["original"].append(o)
        rounds["pruned"].append(p)
    lat: dict[str, Any] = {k: {"median_ms": statistics.median(s.median for s in v), "p10_ms": min(s.p10 for s in v)}
                           for k, v in rounds.items()}
    # the ratio is the median of per-round ratios: a load spike in one round moves one pair
    lat["round_ratios"] = [p.median / o.median for p, o in zip(rounds["pruned"], rounds["original"], strict=True)]
    lat["round_original_ms"] = [o.median for o in rounds["original"]]  # the machine's state in each round
    lat["ratio"] = statistics.median(lat["round_ratios"])
    if lat["ratio"] >= 1.0:
        lat["slower_than_original"] = True
        warnings.warn(f"the pruned network measured {lat['ratio']:.2f}x the original latency; try a larger "
                      "width step (ChannelConstraint(step=16)) or a FLOPs target", stacklevel=3)
    if result.search is not None and result.search.target.startswith("latency"):
        # the search's numbers come from its own oracle; re-express its goal on this measurement's
        # scale (relative targets) so that "within 7%" compares like with like
        s = result.search
        relative = s.target.endswith("%")
        scale = lat["original"]["median_ms"] / s.base if relative else 1.0
        lat["predicted_ms"] = s.achieved * scale
        lat["goal_ms"] = s.goal * scale
        achieved = lat["ratio"] / (s.goal / s.base) if relative else lat["pruned"]["median_ms"] / s.goal
        lat["goal_offset"] = achieved - 1.0  # the final measurement's miss of the goal, as a fraction of it
        lat["within_7pct"] = abs(achieved - 1.0) <= LATENCY_BAND
    result.report["latency"] = lat
    return base_proto


def _recheck(result: PruneResult, finish: Callable[[Plan], PruneResult], evaluator: Evaluator,
             original: nn.Module, out_dir: str | Path | None, threads: int, base_proto: Any) -> PruneResult:
    """When the final measurement lands more than ``RECHECK_BAND`` off a relative latency goal
    that the search met, re-time the plans near the goal in the machine's present state (:func:`recheck_latency`)
    and, if another one holds the band better, build, export and measure it too; the one whose
    final measurement is nearer the goal is returned.  ``report["latency"]["recheck"]`` says
    what was timed and which plan was kept."""
    lat, s = result.report.get("latency") or {}, result.search
    if s is None or not s.met or not s.target.startswith("latency") or not s.target.endswith("%") or "ratio" not in lat:
        return result  # an unmet target: the search's answer is already the fastest plan it found
    goal = s.goal / s.base
    if not needs_recheck(lat["ratio"], goal):
        return result
    done = recheck_latency(evaluator, result.plan, lat["ratio"], goal)
    if done is None:
        return result
    plan, info = done
    record = info.to_dict()
    a = result.analysis
    if plan.widths(a) == result.plan.widths(a):
        lat["recheck"] = {**record, "kept": "answer"}
        return result
    alt = finish(plan)
    _emit_and_measure(alt, original, None, threads, True, base_proto)
    first, second = lat["ratio"], alt.report["latency"]["ratio"]
    log.info("re-check: %s measured %.3f (goal %.3f) against the answer's %.3f",
             list(info.picked or ()), second, goal, first)
    record.update(first_ratio=first, second_ratio=second)
    if abs(second / goal - 1) >= abs(first / goal - 1):
        lat["recheck"] = {**record, "kept": "answer"}
        return result
    alt_lat = alt.report["latency"]
    alt_lat["recheck"] = {**record, "kept": "replacement", "replaced": [g["kept"] for g in result.report["groups"]]}
    row = next((r for r in info.rows if r.widths == info.picked), None)
    if row is not None:  # the search-time estimate of this plan, not of the search's answer
        alt_lat["predicted_ms"] = row.estimate * alt_lat["original"]["median_ms"]
    if out_dir is not None:
        _emit_and_measure(alt, original, out_dir, threads, False)
    return alt


def _check_band(result: PruneResult) -> None:
    """A latency target the search met but the final measurement of the shipped model puts more
    than ``LATENCY_BAND`` off the goal is not passed over in silence: ``report["latency"]``
    gets ``band_missed`` and a warning says by how much, and how loaded the machine was then
    (a model's latency *ratio* moves with the host's load on a shared machine: the zoo's
    convnext at 60 % measured 0.58 of the original at load 1.0 and 0.66 at load 2.4)."""
    lat, s = result.report.get("latency") or {}, result.search
    if s is None or not s.met or lat.get("within_7pct", True):
        return
    off = lat["goal_offset"]
    lat["band_missed"] = True
    if s.target.endswith("%"):
        measured = f"{lat['ratio']:.3f} of the original's latency against a goal of {s.goal / s.base:.3f}"
    else:
        measured = f"{lat['pruned']['median_ms']:.3f} ms against a goal of {s.goal:.3f} ms"
    quiet = (lat.get("states") or {}).get("quiet_ms")
    load = lat["original"]["median_ms"] / quiet if quiet else None
    busy = (f"; the original ran {load:.2f}x as slowly as in the run's quietest round, so the machine was busy"
            if load is not None and load >= BUSY_FACTOR else "")
    warnings.warn(f"{s.target}: the search met the goal, but the final measurement of the pruned model is "
                  f"{measured}, {100 * off:+.1f} % off it (outside the +-{100 * LATENCY_BAND:.0f} % band){busy}. "
                  "A latency ratio moves with this machine's load: time model.onnx again "
                  "(prunepass latency) or prune again when the machine is quieter", stacklevel=3)


def _record_states(result: PruneResult, oracle: LatencyOracle, memory: StateMemory | None) -> None:
    """``report["latency"]["states"]``: what this run saw of the machine's states (over the
    search's deployed timings and the final measurement) and the prior it started from; and
    add the run to the memory (``select.states``) for the next search of this model here."""
    lat = result.report.get("latency") or {}
    if "round_ratios" not in lat:
        return
    # the final rounds under their own key: their sessions differ from the search's by a few %,
    # so a slope is only taken within one source
    final = list(zip(lat.get("round_original_ms", []), lat["round_ratios"], strict=False))
    quiet_ms, slope, heavy = oracle.run_states({("final", oracle._key(result.plan)): final})
    prior = oracle.prior
    lat["states"] = {"quiet_ms": quiet_ms, "slope_seen": slope, "heavy_seen": heavy,
                     "prior": prior.to_dict() if prior else None,
                     "memory": str(memory.path) if memory is not None else None,
                     # [seconds, plan number, original's ms, ratio] of the search's deployed rounds
                     # in turn, and the seconds at which the final measurement had ended
                     "timeline": [[round(t, 2), n, round(ms, 4), round(r, 4)] for t, n, ms, r in oracle.timeline],
                     "final_at": None if oracle.elapsed() is None else round(oracle.elapsed(), 2)}
    if memory is not None and quiet_ms is not None:
        try:
            memory.remember(quiet_ms, slope, heavy)
        except Exception as exc:  # noqa: BLE001 - the memory is a hint; a run never fails for it
            log.warning("could not remember the machine's states (%s: %s)", type(exc).__name__, exc)


def _state_memory(a: Analysis, threads: int) -> StateMemory | None:
    """The state memory of this model here, or None when it is off or cannot be used."""
    try:
        return StateMemory.for_analysis(a, threads)
    except Exception as exc:  # noqa: BLE001 - the memory is a hint; a run never fails for it
        log.warning("machine-state memory unavailable (%s: %s)", type(exc).__name__, exc)
        return None


def _entry_module(model: nn.Module, entry_point: str) -> nn.Module:
    """The module itself, or the capture's wrapper that calls a non-forward entry point."""
    from prunepass.capture import _EntryWrapper

    if entry_point == "forward":
        return model
    sub, _, method = entry_point.rpartition(".")
    return _EntryWrapper(model, sub, method)


def write_outputs(result: PruneResult, out: Path) -> None:
    """state dict + plan (rebuild with ``Plan.load`` + ``apply_plan``) + report.json + report.md."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), out / "pruned_state_dict.pt")
    result.plan.save(out / "plan.json")
    (out / "report.json").write_text(json.dumps(result.report, indent=1, default=float))
    from prunepass.report import write_markdown

    write_markdown(result.report, out)
