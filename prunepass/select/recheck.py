"""The last step of a latency-targeted ``prune()``: when the final measurement of the shipped
model lands well off a relative latency goal, re-time the plans near the goal in the machine's
state of the moment, and pick one that holds the band in both states: its ratios at load 1 and
at the heavy load where the ratio's slope with the machine's load is known (seen by this run or
remembered from earlier ones), else the state of the moment and the search's estimate.

Why it is needed: on a shared VM a small model's latency *ratio* moves with the machine's state,
and not by the same amount for every plan.  The digits CNN at batch 64, target 40 %: a plan with
a 16-channel first layer measures 0.40 in a quiet state and 0.35 when the original runs twice as
slowly, while a plan with an 8-channel first layer stays within a few percent of 0.40 in both.
The search aims each plan between the states it saw (``STATE_AIM`` of the way from the quiet one
to the heavy load); a state it did not see can still move
its answer out of the band.  The final check sees that state, so it is the moment to choose
among the plans already exported the one whose ratio the state moves least."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prunepass.errors import LatencyMeasurementError
from prunepass.plan import Plan
from prunepass.select.targets import Evaluator

log = logging.getLogger(__name__)

RECHECK_BAND = 0.05  # a final measurement this far off a relative latency goal is re-checked
RECHECK_NOW_BAND = 0.04  # a replacement measures this close to the goal in the present state
RECHECK_EST_BAND = 0.07  # ... and its search-time estimate is within the promised band
RECHECK_POOL = 12  # plans timed as deployed during the search, nearest the goal, that are re-timed
RECHECK_GAIN = 0.01  # otherwise a plan replaces the answer only if its worst miss is this much smaller
RECHECK_LOSS_SLACK = 0.05  # ... and, when the answer is not over the ceiling, costs at most this much more loss
RECHECK_CEILING = 0.07  # an answer at most this far over the goal in both states is not over it (the band)


@dataclass
class RecheckRow:
    """One plan of the re-check: its search-time deployed estimate and its ratio now (both as
    fractions of the original's latency, on the final measurement's scale)."""

    widths: tuple
    estimate: float
    now: float
    loss: float | None = None
    states: tuple[float, float] | None = None  # (quiet, heavy) ratio, when the ratio's slope is known

    def worst(self, goal: float) -> float:
        """The largest miss of the goal in the two states: the quiet and heavy-load ratios where the
        slope is known, else the search-time estimate and the ratio now."""
        pair = self.states or (self.estimate, self.now)
        return max(abs(pair[0] / goal - 1), abs(pair[1] / goal - 1))

    def holds(self, goal: float) -> bool:
        """Within the band in both states: both state ratios within ``RECHECK_NOW_BAND`` where the
        slope is known; else within it now and the search-time estimate within ``RECHECK_EST_BAND``."""
        if self.states is not None:
            return self.worst(goal) <= RECHECK_NOW_BAND
        return abs(self.now / goal - 1) <= RECHECK_NOW_BAND and abs(self.estimate / goal - 1) <= RECHECK_EST_BAND

    def faster(self) -> bool:
        """Under the original's latency in every state seen."""
        return max(self.now, self.estimate, *(self.states or ())) < 1.0


@dataclass
class Recheck:
    """What the re-check did: the final measurement that triggered it, the rows it timed and the
    plan it picked (the answer's own widths when none was better)."""

    goal: float
    measured: float
    rows: list[RecheckRow] = field(default_factory=list)
    picked: tuple | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "measured": self.measured, "picked": list(self.picked or ()),
                "seconds": round(self.seconds, 2),
                "rows": [{"widths": list(r.widths), "estimate": round(r.estimate, 4), "now": round(r.now, 4),
                          **({"loss": round(r.loss, 5)} if r.loss is not None else {}),
                          **({"quiet": round(r.states[0], 4), "busy": round(r.states[1], 4)} if r.states else {})}
                         for r in self.rows]}


def needs_recheck(measured: float, goal: float) -> bool:
    """True when a measured latency ratio is more than ``RECHECK_BAND`` off the goal ratio."""
    return abs(measured / goal - 1) > RECHECK_BAND


def pick(rows: list[RecheckRow], answer: RecheckRow, goal: float,
         loss: Callable[[RecheckRow], float] | None = None) -> RecheckRow:
    """The plan to ship among ``rows`` (the answer among them).

    The two states of a row are its quiet and heavy-load ratios where the ratio's slope is
    known (``RecheckRow.states``), else its search-time estimate and its ratio now.  The answer
    stays when it is within ``RECHECK_NOW_BAND`` of the goal in both (the state that moved it has
    passed).  Otherwise the plans that hold the band in both states (``RecheckRow.holds``) win:
    the ones within ``RECHECK_NOW_BAND`` in both come first, then the lowest ``loss``
    (calibration loss; without one the smallest worst miss).  When no plan holds both, the one
    with the smallest worst miss over the two states wins, if that is at least ``RECHECK_GAIN``
    smaller than the answer's (when the answer is not over the goal by more than
    ``RECHECK_CEILING`` in either state, only among plans whose loss is at most
    ``RECHECK_LOSS_SLACK`` above the answer's).  A plan at or above
    the original's latency in either state never wins."""
    if answer.worst(goal) <= RECHECK_NOW_BAND:
        return answer
    usable = [r for r in rows if r.faster()]
    both = [r for r in usable if r.holds(goal)]
    if both:
        return min(both, key=lambda r: (r.worst(goal) > RECHECK_NOW_BAND, loss(r) if loss else 0.0, r.worst(goal)))
    if loss is not None and max(answer.states or (answer.estimate, answer.now)) <= goal * (1 + RECHECK_CEILING):
        # an answer that is not over the band breaks no ceiling: a plan that holds neither state
        # may replace it only at about its loss (the digits CNN at batch 64: 8,24,32,24 at
        # 0.43 / 0.51 of the original, loss 0.14, replaced by 16,16,32,8 at 0.51 / 0.53, loss 0.87;
        # 8,24,32,32 at 0.43 / 0.525, loss 0.15, by 16,8,48,40 at 0.45 / 0.54, loss 0.91: 62 % raw)
        usable = [r for r in usable if loss(r) <= loss(answer) + RECHECK_LOSS_SLACK * abs(loss(answer))]
    best = min(usable, key=lambda r: r.worst(goal), default=None)
    if best is not None and best.worst(goal) < answer.worst(goal) - RECHECK_GAIN:
        return best
    return answer


def recheck_latency(evaluator: Evaluator, plan: Plan, measured: float, goal: float) -> tuple[Plan, Recheck] | None:
    """Re-time ``plan`` and up to ``RECHECK_POOL`` other plans the search timed, those whose
    estimate lies nearest ``goal``, as deployed and in the machine's present state, and pick
    (:func:`pick`).  A plan timed as deployed during the search is estimated by
    ``LatencyOracle.deployed_estimate``; one timed only on the search's fast path by that timing
    times the answer's deployed / fast bias.  ``measured`` is the final measurement's ratio of
    ``plan`` that called for the re-check; it is only reported: the state may have moved again
    since, and the plans are compared on timings taken together.  Returns ``(plan to ship, what
    was done)``, or None when the evaluator's oracle keeps no deployed timings (a stand-in
    oracle, or a search that never timed a deployment)."""
    from prunepass.onnx_backend import OnnxExportError

    oracle = evaluator.latency
    rounds = getattr(oracle, "deployed_rounds", None) or {}
    timed = getattr(oracle, "plans", None) or {}
    key = oracle._key(plan) if hasattr(oracle, "_key") else None
    if key not in rounds or key not in timed:
        return None
    t0 = time.perf_counter()
    # plans with deployed rounds (a failed timing leaves none), then those timed on the fast path only
    plans = {k: p for k, p in timed.items() if k in rounds}
    estimate = {k: oracle.deployed_estimate(p) for k, p in plans.items()}
    fast = getattr(oracle, "cache", {})
    # search timings are on the scale of base("latency"); the answer's own deployed / fast bias
    # places the others, else the median of the plans timed both ways, else a fast timing of the
    # answer now (a search's answer is often timed only with more runs and as deployed: vit at
    # 50 % re-checked the answer alone, 8 % under the goal, with 20 plans near it timed)
    both = [estimate[k] / fast[k] for k in estimate if fast.get(k, 0) > 0]
    bias = None
    if fast.get(key, 0) > 0:
        bias = estimate[key] / fast[key]
    elif both:
        bias = statistics.median(both)
    elif callable(oracle) and len(timed) > len(plans):
        try:
            bias = estimate[key] / oracle(plan)
        except (OnnxExportError, LatencyMeasurementError, RuntimeError) as exc:
            log.warning("could not time the answer on the search's path (%s)", str(exc)[:200])
    if bias is not None:
        for k, p in timed.items():
            if k not in estimate and fast.get(k, 0) > 0:
                plans[k], estimate[k] = p, fast[k] * bias
    near = sorted((k for k in plans if k != key), key=lambda k: abs(estimate[k] / goal - 1))[:RECHECK_POOL]
    keys = [key, *near]
    seen = {k: len(rounds.get(k, ())) for k in keys}
    log.info("final measurement %.3f of the original's latency, goal %.3f: re-timing %d plans in the "
             "machine's present state", measured, goal, len(keys))
    try:
        oracle.deployed_ratios([plans[k] for k in keys])
    except (OnnxExportError, LatencyMeasurementError, RuntimeError) as exc:
        log.warning("could not re-time the plans near the goal (%s); keeping the answer", str(exc)[:200])
        return None
    now = {k: statistics.median(r for _, r in rounds[k][seen[k]:]) for k in keys}
    # each plan's two states over all its rounds, the search's and these (where the slope is known)
    states = getattr(oracle, "state_values", lambda p: None)
    rows = [RecheckRow(k, estimate[k], now[k], evaluator.loss(plans[k]) if evaluator.has_loss else None,
                       states(plans[k])) for k in keys]
    chosen = pick(rows, rows[0], goal, (lambda r: r.loss) if evaluator.has_loss else None)
    done = Recheck(goal, measured, rows, chosen.widths, time.perf_counter() - t0)
    return plans[chosen.widths], done
