"""Constraints on the pruned model: ratio, FLOPs, params or onnxruntime latency, absolute or
as a percentage of the original (``"60%"``), and the evaluators that measure them."""

from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prunepass.analysis import Analysis
from prunepass.costs import CostModel
from prunepass.errors import LatencyMeasurementError
from prunepass.plan import Plan
from prunepass.select.states import SLOPE_LIMITS, StatePrior

log = logging.getLogger(__name__)

METRICS = ("latency", "flops", "params", "ratio")
REMEASURE_SECONDS = 1.5  # a confirmation timing of a candidate is capped near this many seconds
DEPLOYED_ROUNDS = 5  # rounds of a deployed-model timing (prune()'s final check uses as many)
DEPLOYED_ROUND_SECONDS = 0.3  # each round of it lasts about this long (small models: many runs)
REF_SESSIONS = 3  # sessions of the original's full export, taken in turn (each is a few % fast or slow)
BUSY_FACTOR = 1.12  # a round whose original ran this much slower than in the quietest round was "busy"
MIN_LOAD_SPREAD = 0.05  # a plan's quiet and busy rounds this close in load tell no slope
HEAVY_QUANTILE = 0.8  # the heavy load: this quantile of the loads of a run's deployed rounds
# a plan's estimate lies this far from its ratio at load 1 to its ratio at the heavy load: the
# later measurements of an answer (prune()'s final one, a benchmark's re-timings) ran at a load
# above the midway point in 11 of 15 zoo runs (by 0.18 on average), close to three quarters of
# the way to the heavy load (thirteenth session's logs, docs/bench_latency_latest.txt)
STATE_AIM = 0.75


@dataclass(frozen=True)
class Target:
    """``metric`` at most ``value`` (``relative``: a fraction of the original).  For ``ratio``
    the value is the fraction of channels to remove in every group."""

    metric: str
    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str | dict | Target) -> Target:
        """``"latency=60%"``, ``"flops=50%"``, ``"params=5e6"``, ``"latency=2.5"`` (ms),
        ``"ratio=0.4"``; or a dict ``{"flops": "60%"}``."""
        if isinstance(text, Target):
            return text
        if isinstance(text, dict):
            if len(text) != 1:
                raise ValueError(f"give exactly one target, got {text}")
            (k, v), = text.items()
            text = f"{k}={v}"
        m = re.fullmatch(r"\s*(\w+)\s*=\s*([0-9.eE+-]+)\s*(%?)\s*", str(text))
        if not m or m.group(1) not in METRICS:
            raise ValueError(f"target must look like latency=60%, flops=50%, params=5e6 or ratio=0.4; got {text!r}")
        metric, number, pct = m.group(1), float(m.group(2)), m.group(3) == "%"
        if metric == "ratio":
            if pct:
                number /= 100.0
            if not 0 <= number < 1:
                raise ValueError(f"ratio must be in [0, 1), got {number}")
            return cls("ratio", number, True)
        if pct:
            if not 0 < number <= 100:
                raise ValueError(f"a percentage target must be in (0, 100], got {number}%")
            return cls(metric, number / 100.0, True)
        if number <= 0:
            raise ValueError(f"{metric} target must be positive")
        return cls(metric, number, False)

    def absolute(self, base: float) -> float:
        return self.value * base if self.relative else self.value

    def __str__(self) -> str:
        if self.metric == "ratio":
            return f"ratio={self.value:g}"
        return f"{self.metric}={self.value * 100:g}%" if self.relative else f"{self.metric}={self.value:g}"


def _empty(analysis: Analysis) -> Plan:
    return Plan.from_keep(analysis, {})


class LatencyOracle:
    """Measured onnxruntime latency of plans: the ONNX fast path when it works for the model,
    a full export otherwise.  Results are cached by widths (the kept channel counts).

    Searches compare candidates by the 10th percentile (``statistic="p10"``): interference from
    other processes only ever adds time, so a low percentile is the steadiest estimate of a
    candidate's own cost on a shared machine; each candidate is also timed run by run in turn
    with the unpruned model and scaled by it.  Final reports give the median and p10."""

    def __init__(self, analysis: Analysis, *, threads: int = 1, runs: int = 60, warmup: int = 10,
                 use_fast_path: bool = True, statistic: str = "p10") -> None:
        self.analysis = analysis
        self.threads, self.runs, self.warmup = threads, runs, warmup
        self.statistic = statistic
        self._template: Any = None
        self._fast = use_fast_path
        self.cache: dict[tuple, float] = {}
        self.plans: dict[tuple, Plan] = {}  # every plan timed (fast path or deployed), by widths
        self._reference: float | None = None  # the unpruned model's latency (fast path)
        self._deployed_refs: list[tuple] = []  # (session, feeds) of the unpruned model's full export, several
        self._ref_turn = 0
        self._deployed: dict[tuple, list[tuple]] = {}  # the same for plans, by widths (one more per timing)
        self._deployed_protos: dict[tuple, Any] = {}
        # (original's median ms, ratio) of every deployed round of every plan timed so far: a
        # small model's ratio moves several percent with the machine's state, so a plan timed
        # again is judged on all its rounds, and rounds are told apart by the state they ran in
        self.deployed_rounds: dict[tuple, list[tuple[float, float]]] = {}
        # (seconds since the first deployed round, plan's number in ``plans`` order, original's
        # ms, ratio) of every deployed round in the order they ran: when the machine was in
        # which state, for ``report["latency"]["states"]["timeline"]``
        self.timeline: list[tuple[float, int, float, float]] = []
        self._t0: float | None = None
        # what earlier runs of this model on this machine saw of its states (``select.states``):
        # the original's quiet latency tells a search that saw one state which one it was, and
        # the remembered gap moves a plan's estimate toward the heavy load as if it had seen both
        self.prior: StatePrior | None = None
        self.evaluations = 0
        self.progress: Any = None  # a tqdm-like bar (``update(n)``) that counts the timings, when set
        self.mode = "fast" if use_fast_path else "export"

    def elapsed(self) -> float | None:
        """Seconds since the first deployed round (the clock of ``timeline``), None before it."""
        return None if self._t0 is None else time.monotonic() - self._t0

    def _count(self, n: int) -> None:
        self.evaluations += n
        if self.progress is not None:
            self.progress.update(n)

    def _key(self, plan: Plan) -> tuple:
        w = plan.widths(self.analysis)
        return tuple(w[g.name] for g in self.analysis.prunable_groups)

    def __call__(self, plan: Plan) -> float:
        key = self._key(plan)
        if key not in self.cache:
            self.cache[key] = self.measure(plan)
            self.plans.setdefault(key, plan)
        return self.cache[key]

    def long_runs(self) -> int:
        """Runs for a confirmation timing: 4x the usual (at least 200), but no more than about
        ``REMEASURE_SECONDS`` of the unpruned model's time (a candidate is timed in turn with
        the unpruned model, so a slow model would otherwise take ~10 s a candidate)."""
        runs = max(200, 4 * self.runs)
        if self._reference:
            runs = min(runs, int(REMEASURE_SECONDS * 1000.0 / self._reference))
        return max(self.runs, runs)

    def measure(self, plan: Plan, runs: int | None = None) -> float:
        from prunepass.onnx_backend import OnnxExportError, OnnxTemplate, paired_latency

        self._count(1)
        kwargs = dict(threads=self.threads, runs=runs or self.runs, warmup=self.warmup)
        if self._fast:
            try:
                if self._template is None:
                    self._template = OnnxTemplate(self.analysis)
                    self._template.measure(plan, check=True, **kwargs)  # one checked candidate
                    self._reference = getattr(self._template.measure(_empty(self.analysis), **kwargs), self.statistic)
                if not plan.keep:
                    return self._reference
                # time the candidate and the unpruned model run by run in turn and scale: load from
                # other processes hits both alike, so the ratio is what we trust
                ref = self._template.session(_empty(self.analysis), check=False, threads=self.threads)
                cand = self._template.session(plan, check=False, threads=self.threads)
                value, base = paired_latency([cand, ref], **kwargs)
                return self._reference * getattr(value, self.statistic) / getattr(base, self.statistic)
            except (OnnxExportError, LatencyMeasurementError, RuntimeError) as exc:
                log.warning("ONNX fast path unavailable (%s); timing candidates by full export", str(exc)[:200])
                self._fast = False
                self.mode = "export"
        return getattr(measure_plan_full(self.analysis, plan, **kwargs), self.statistic)

    def deployed_ratios(self, plans: list[Plan], rounds: int = DEPLOYED_ROUNDS) -> list[float]:
        """The plans' latencies as fractions of the original's, as ``prune()`` ships and checks
        them: full exports (optimised and cleaned, unlike the fast path's template), ``rounds``
        rounds in which each plan is timed run by run in turn with a full export of the unpruned
        model for about ``DEPLOYED_ROUND_SECONDS``; per plan the estimate of
        ``deployed_estimate`` over every timing of it so far (per round, the ratio of medians).

        Each plan is timed in a pair, as ``prune()``'s final check times its answer: interleaving
        many sessions leaves every run with a cold cache, which slows a pruned network more than
        the original (+2.7 % on the resnet50 zoo model with 9 sessions).  The original has
        ``REF_SESSIONS`` sessions, taken in turn from round to round: two sessions of one model
        differ by up to 5 % for as long as they live (where their buffers land in memory); a plan
        gets one more session each time it is timed again, up to as many.  The fast path ranks
        candidates well but its unpruned template runs a few percent faster than the shipped
        export, so a search confirms its answer with this."""
        from prunepass.onnx_backend import paired_rounds

        self._count(len(plans))
        if not self._deployed_refs:
            proto = _full_export(self.analysis, _empty(self.analysis))
            self._deployed_refs = [_session(self.analysis, proto, self.threads) for _ in range(REF_SESSIONS)]
        by_key = {self._key(p): p for p in plans}
        keys = list(by_key)
        for key, plan in by_key.items():
            if key not in self._deployed_protos:
                self._deployed_protos[key] = _full_export(self.analysis, plan)
                self.plans.setdefault(key, plan)
            sessions = self._deployed.setdefault(key, [])
            if len(sessions) < REF_SESSIONS:  # a plan timed again (the answer) gets one more session
                sessions.append(_session(self.analysis, self._deployed_protos[key], self.threads))
        number = {k: i for i, k in enumerate(self.plans)}  # the plans' numbers in the timeline
        for r in range(rounds):
            self._ref_turn += 1
            ref = self._deployed_refs[self._ref_turn % len(self._deployed_refs)]
            for key in keys if r % 2 == 0 else reversed(keys):
                sessions = self._deployed[key]
                (o, p), = paired_rounds([ref, sessions[r % len(sessions)]], rounds=1, runs=20,
                                        min_seconds=DEPLOYED_ROUND_SECONDS, warmup=5 if r == 0 else 2,
                                        threads=self.threads)
                self.deployed_rounds.setdefault(key, []).append((o.median, p.median / o.median))
                self._t0 = self._t0 if self._t0 is not None else time.monotonic()
                self.timeline.append((time.monotonic() - self._t0, number[key], o.median,
                                      p.median / o.median))
        return [self.deployed_estimate(p) for p in plans]

    def _quiet_ms(self, lowest: float | None = None) -> float:
        """The original's latency in the quiet state, the unit of the machine's load: the
        quietest deployed round (``lowest``, or this run's), or the remembered quiet latency
        when even that round ran ``BUSY_FACTOR`` slower than it (a run that saw only busy
        rounds knows they were busy; otherwise what the run saw comes first)."""
        if lowest is None:
            lowest = min(t for rounds in self.deployed_rounds.values() for t, _ in rounds)
        if self.prior is not None and self.prior.quiet_ms and lowest >= BUSY_FACTOR * self.prior.quiet_ms:
            return self.prior.quiet_ms
        return lowest

    def _slopes(self, rounds: dict[tuple, list[tuple[float, float]]], quiet_ms: float) -> dict[tuple, float]:
        """The ratio's slope of each plan that ran in a quiet and a busy state: on a shared VM
        the machine switches, for seconds to minutes at a time, between a quiet state and busy
        ones where the original runs 1.3 to 2.5 times slower; a small model slows down more than
        that, so its ratio rises with the *load* (the original's latency over ``quiet_ms``),
        about in proportion (convnext at 60 %: 0.58 at load 1.0, 0.62 at 1.4, 0.66 at 2.4).  A
        round is busy when the original ran ``BUSY_FACTOR`` slower than ``quiet_ms``; the slope
        is the relative rise of the busy rounds' median ratio over the quiet ones', per unit of
        load between their median loads (kept within ``SLOPE_LIMITS``)."""
        cut, out = BUSY_FACTOR * quiet_ms, {}
        for key, pairs in rounds.items():
            quiet, busy = [p for p in pairs if p[0] < cut], [p for p in pairs if p[0] >= cut]
            if not quiet or not busy:
                continue
            spread = (statistics.median(t for t, _ in busy) - statistics.median(t for t, _ in quiet)) / quiet_ms
            if spread < MIN_LOAD_SPREAD:
                continue
            rise = statistics.median(r for _, r in busy) / statistics.median(r for _, r in quiet) - 1
            out[key] = min(max(rise / spread, SLOPE_LIMITS[0]), SLOPE_LIMITS[1])
        return out

    def state_slope(self, plan: Plan | None = None) -> float | None:
        """The ratio's relative rise per unit of load for ``plan`` (its own rounds when it ran in
        two states, else the median over the plans that did, else the slope remembered from
        earlier runs, ``self.prior``); None while none is known."""
        remembered = self.prior.slope if self.prior is not None else None
        if not self.deployed_rounds:
            return remembered
        slopes = self._slopes(self.deployed_rounds, self._quiet_ms())
        if plan is not None and self._key(plan) in slopes:
            return slopes[self._key(plan)]
        return statistics.median(slopes.values()) if slopes else remembered

    def heavy_load(self) -> float:
        """The heaviest load a later measurement is expected to meet: the ``HEAVY_QUANTILE`` of
        this run's deployed rounds' loads, or the machine's remembered heavy load
        (``self.prior``) when that is heavier; at least 1."""
        run = 1.0
        if self.deployed_rounds:
            quiet_ms = self._quiet_ms()
            run = _quantile([t / quiet_ms for rounds in self.deployed_rounds.values() for t, _ in rounds],
                            HEAVY_QUANTILE)
        remembered = self.prior.heavy if self.prior is not None and self.prior.heavy else 1.0
        return max(1.0, run, remembered)

    def state_gap(self, plan: Plan | None = None) -> float | None:
        """heavy / quiet ratio of ``plan``: 1 + ``state_slope`` x (``heavy_load`` - 1); None
        while no slope is known."""
        slope = self.state_slope(plan)
        return None if slope is None else 1 + slope * (self.heavy_load() - 1)

    def run_states(self, extra: dict[tuple, list[tuple[float, float]]] | None = None
                   ) -> tuple[float | None, float | None, float | None]:
        """What this run saw of the machine's states, over every deployed round and ``extra``
        rounds (prune()'s final measurement): the original's latency in the quietest round (ms),
        the median slope of the plans that ran in two states, told apart by this run's rounds
        alone (None when none did), and the heavy load (``HEAVY_QUANTILE`` of the rounds' loads,
        against the remembered quiet latency when every round ran busy by it).
        ``select.states`` remembers all three."""
        rounds: dict[tuple, list[tuple[float, float]]] = {k: list(v) for k, v in self.deployed_rounds.items()}
        for key, more in (extra or {}).items():
            rounds.setdefault(key, []).extend(more)
        every = [t for v in rounds.values() for t, _ in v]
        if not every:
            return None, None, None
        lowest = min(every)
        quiet_ms = self._quiet_ms(lowest)
        slopes = self._slopes(rounds, lowest)
        heavy = max(1.0, _quantile([t / quiet_ms for t in every], HEAVY_QUANTILE))
        return lowest, statistics.median(slopes.values()) if slopes else None, heavy

    def state_swing(self, plan: Plan, above: bool = True) -> float:
        """How far the ratio of ``plan`` in the state above its estimate (``above``; else the
        one below) lies from the estimate, as a fraction of it: ``STATE_AIM`` of the heavy /
        quiet gap lies below, the rest above; 0 while no slope was seen or remembered."""
        gap = self.state_gap(plan)
        if not gap:
            return 0.0
        aim = 1 + STATE_AIM * (gap - 1)
        return (max(1.0, gap) - aim) / aim if above else (aim - min(1.0, gap)) / aim

    def state_values(self, plan: Plan) -> tuple[float, float] | None:
        """A plan's deployed ratio in the quiet state (load 1) and at the heavy load: its rounds
        each brought back to load 1 by the slope (the plan's own, the other plans', or the
        remembered one) and their median, then moved up to ``heavy_load``; None before the plan
        was timed as deployed, or while no slope is known."""
        pairs = self.deployed_rounds.get(self._key(plan))
        slope = self.state_slope(plan) if pairs else None
        if slope is None:
            return None
        quiet_ms = self._quiet_ms()
        quiet = statistics.median(r / (1 + slope * (max(t / quiet_ms, 1.0) - 1)) for t, r in pairs)
        return quiet, quiet * (1 + slope * (self.heavy_load() - 1))

    def deployed_estimate(self, plan: Plan) -> float:
        """A plan's deployed ratio ``STATE_AIM`` of the way from the quiet state to the heavy
        load (``state_values``), where a later measurement most likely lands, and its plain
        median before any slope was seen (nor remembered from earlier runs)."""
        states = self.state_values(plan)
        if states is None:
            return statistics.median(r for _, r in self.deployed_rounds[self._key(plan)])
        return states[0] + STATE_AIM * (states[1] - states[0])


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def _full_export(analysis: Analysis, plan: Plan) -> Any:
    """The pruned program's full ONNX export (optimised and cleaned, as ``prune()`` ships it)."""
    from prunepass.onnx_backend import export_onnx
    from prunepass.rewrite import prune_program

    program = prune_program(analysis, plan, export=False)
    return export_onnx(program, analysis.captured.args, analysis.captured.kwargs, verify=False)


def _session(analysis: Analysis, proto: Any, threads: int) -> tuple:
    """(session, example feeds) of an ONNX model of the analysed program."""
    from prunepass.onnx_backend import example_feeds, make_session

    sess = make_session(proto, threads)
    return sess, example_feeds(sess, analysis.captured.args, analysis.captured.kwargs)


def measure_plan_full(analysis: Analysis, plan: Plan, threads: int = 1, runs: int = 40, warmup: int = 5) -> Any:
    """Prune the program, export it to ONNX and time it (the slow, always-available path)."""
    from prunepass.onnx_backend import measure_latency

    return measure_latency(_full_export(analysis, plan), threads=threads, runs=runs, warmup=warmup)


class Evaluator:
    """Value of a metric for a plan: FLOPs and params from the cost formulas (microseconds),
    latency from the oracle (measured)."""

    def __init__(self, analysis: Analysis, cost: CostModel | None = None, latency: LatencyOracle | None = None,
                 loss: Callable[[Plan], float] | None = None) -> None:
        self.analysis = analysis
        self.cost = cost or CostModel(analysis)
        self._latency = latency
        self._base_latency: float | None = None
        self._loss = loss
        self._loss_cache: dict[tuple, float] = {}

    @property
    def has_loss(self) -> bool:
        return self._loss is not None

    def loss(self, plan: Plan) -> float:
        """Calibration loss of the pruned model (lower is better), cached by widths; needs a
        ``loss`` callable (``prunepass.prune`` builds one from its data and loss function)."""
        if self._loss is None:
            raise ValueError("this evaluator has no loss function")
        key = self._loss_key(plan)
        if key not in self._loss_cache:
            self._loss_cache[key] = float(self._loss(plan))
        return self._loss_cache[key]

    def cached_loss(self, plan: Plan) -> float | None:
        """The plan's calibration loss if it was computed already, else None (computes nothing)."""
        return self._loss_cache.get(self._loss_key(plan))

    @staticmethod
    def _loss_key(plan: Plan) -> tuple:
        return tuple(sorted((k, tuple(v)) for k, v in plan.keep.items()))

    @property
    def latency(self) -> LatencyOracle:
        if self._latency is None:
            self._latency = LatencyOracle(self.analysis)
        return self._latency

    def base(self, metric: str) -> float:
        if metric == "flops":
            return float(self.cost.flops())
        if metric == "params":
            return float(self.cost.params())
        if metric == "latency":
            if self._base_latency is None:
                self._base_latency = self.latency(Plan.from_keep(self.analysis, {}))
            return self._base_latency
        raise ValueError(metric)

    def remeasure(self, plan: Plan) -> float:
        """A fresh, longer latency measurement of ``plan`` (single timings are noisy on a shared
        machine); searches use it to confirm finalists.  Not cached."""
        oracle = self.latency
        long_runs = getattr(oracle, "long_runs", None)  # duck-typed oracles may not have it
        return oracle.measure(plan, runs=long_runs() if long_runs else max(200, oracle.runs * 4))

    def deployed(self, plans: list[Plan]) -> list[float] | None:
        """The plans' latencies as shipped (full exports, timed in turn with the original's:
        ``LatencyOracle.deployed_ratios``) on the scale of ``base("latency")``; None when the
        oracle cannot tell (a stand-in without ``deployed_ratios``) or an export fails."""
        from prunepass.onnx_backend import OnnxExportError

        ratios_of = getattr(self.latency, "deployed_ratios", None)
        if ratios_of is None:
            return None
        try:
            ratios = [float(r) for r in ratios_of(plans)]
        except (OnnxExportError, LatencyMeasurementError, RuntimeError) as exc:
            log.warning("could not time the answer as deployed (%s); keeping the search's timing", str(exc)[:200])
            return None
        return [r * self.base("latency") for r in ratios]

    def state_swing(self, plan: Plan, above: bool = True) -> float:
        """How far the machine's state moves ``plan``'s deployed latency above its estimate
        (else below), as a fraction (``LatencyOracle.state_swing``; 0 for oracles that cannot tell)."""
        swing = getattr(self.latency, "state_swing", None)
        return float(swing(plan, above)) if swing is not None else 0.0

    def value(self, metric: str, plan: Plan) -> float:
        w = plan.widths(self.analysis)
        if metric == "flops":
            return float(self.cost.flops(w))
        if metric == "params":
            return float(self.cost.params(w))
        if metric == "latency":
            return self.latency(plan)
        raise ValueError(metric)
