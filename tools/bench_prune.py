"""Pruning benchmark: cost ratios, onnxruntime latency and candidate-evaluation speed per zoo model.

For every model, at ``--ratio`` (default 50 %) uniform pruning, it reports

* FLOPs and parameter ratios (pruned / original) from :class:`prunepass.costs.CostModel`;
* onnxruntime latency of the original and the pruned ONNX model (median and p10 in ms).  Both are
  measured with the same settings in one process, interleaved (original, pruned, original, pruned,
  ... for ``--rounds`` rounds); the reported numbers are the medians of the per-round statistics;
* the time to evaluate one pruning candidate two ways, with the same runs / warm-up:

  - fast path: ``OnnxTemplate.measure(plan, check=False)`` (slices the initializers of an ONNX
    template exported once; the one-time template export is reported separately as "template s");
  - full re-export: ``apply_plan`` + ``export_onnx(verify=False)`` + ``measure_latency``.

Correctness is checked outside the timed sections: the fast-path candidate once against the pruned
program (``check=True``), the pruned eager module against the pruned program (``verify_eager``) and
the pruned ONNX model against the pruned eager module (``verify_onnx``).  Problems are listed under
the table; a failing stage of one model is reported in its row and the benchmark goes on.

    python tools/bench_prune.py                          # every zoo model
    python tools/bench_prune.py --models resnet50,vit --runs 100 --json prune.json

The "goals" section after the table is a report: it prints PASS / MISS, it never raises.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from _timeout import time_limit  # noqa: E402 - sibling helper (tools/ is on sys.path)
from torch import nn
from torch.utils._pytree import tree_leaves

import models
from prunepass import analyze
from prunepass.costs import CostModel
from prunepass.onnx_backend import (
    LatencyStats,
    OnnxTemplate,
    export_onnx,
    measure_latency,
    verify_onnx,
)
from prunepass.rewrite import apply_plan, verify_eager
from prunepass.select import uniform_plan

T = TypeVar("T")

FAST_PATH_GOAL_MODEL = "resnet50"
FAST_PATH_GOAL_S = 0.5
DEFAULT_TIMEOUT_S = 900.0  # per model, all stages together
REASON_WIDTH = 28  # characters of a failure reason shown inside a table cell
NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "torch._dynamo", "onnxscript", "onnx_ir")


@dataclass(frozen=True)
class Settings:
    ratio: float = 0.5
    threads: int = 1  # onnxruntime intra-op threads
    runs: int = 200  # timed runs per round for the original / pruned latency columns
    warmup: int = 20
    rounds: int = 3
    candidate_runs: int = 30  # timed runs of one candidate evaluation (fast and full alike)
    candidate_warmup: int = 5
    candidate_repeats: int = 1  # candidate evaluations per path; the median is reported
    timeout_s: float = DEFAULT_TIMEOUT_S


# --------------------------------------------------------------------------- results
@dataclass
class Latency:
    """Median over rounds of the per-round median and p10 (ms)."""

    median: float
    p10: float
    round_medians: list[float]


@dataclass
class Row:
    model: str
    flops_ratio: float | None = None
    params_ratio: float | None = None
    original: Latency | None = None
    pruned: Latency | None = None
    template_s: float | None = None
    fast_s: float | None = None
    fast_latency_ms: float | None = None  # median latency the fast path measured for the candidate
    full_s: float | None = None
    full_breakdown_s: dict[str, float] = field(default_factory=dict)  # apply / export / measure
    error: str | None = None  # the model could not be analysed at all
    latency_error: str | None = None
    fast_error: str | None = None
    full_error: str | None = None
    problems: list[str] = field(default_factory=list)  # correctness checks that failed (timings still shown)

    @property
    def latency_ratio(self) -> float | None:
        if self.original is None or self.pruned is None:
            return None
        return _ratio(self.pruned.median, self.original.median)

    @property
    def speedup(self) -> float | None:
        return _ratio(self.full_s, self.fast_s)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _short_error(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:300]


def attempt(fn: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run ``fn``; a failure is a result of the benchmark (``(None, reason)``), never a crash."""
    try:
        return fn(), None
    except TimeoutError:
        raise  # the per-model limit ends the whole model
    except Exception as exc:  # noqa: BLE001 - any stage failing on a model is reported, not raised
        return None, _short_error(exc)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------- onnxruntime helpers
def make_session(proto: Any, threads: int) -> Any:
    """An onnxruntime session configured like prunepass times candidates."""
    from prunepass.onnx_backend import make_session as _make

    return _make(proto, threads)


def make_feeds(session: Any, args: tuple, kwargs: dict) -> dict[str, np.ndarray] | None:
    """The example inputs as feeds, in graph-input order; ``None`` (random feeds) if they do not line up."""
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(tensors):
        return None
    return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}


def interleaved_latency(protos: Sequence[Any], feeds: Sequence[dict[str, np.ndarray] | None],
                        s: Settings) -> list[Latency]:
    """Latency of several models measured in turn for ``s.rounds`` rounds (drift hits all alike)."""
    sessions = [make_session(p, s.threads) for p in protos]
    per_round: list[list[LatencyStats]] = [[] for _ in protos]
    for _ in range(s.rounds):
        for i, (sess, fd) in enumerate(zip(sessions, feeds, strict=True)):
            per_round[i].append(measure_latency(None, fd, session=sess, threads=s.threads,
                                                warmup=s.warmup, runs=s.runs))
    return [
        Latency(median=statistics.median(st.median for st in stats), p10=statistics.median(st.p10 for st in stats),
                round_medians=[st.median for st in stats])
        for stats in per_round
    ]


# --------------------------------------------------------------------------- one model
def fast_path_eval(tpl: OnnxTemplate, plan: Any, s: Settings) -> tuple[float, float]:
    """(seconds for one fast-path candidate evaluation, candidate median latency ms)."""
    stats, seconds = timed(lambda: tpl.measure(plan, check=False, threads=s.threads,
                                               runs=s.candidate_runs, warmup=s.candidate_warmup))
    return seconds, stats.median


def full_path_eval(model: nn.Module, analysis: Any, plan: Any, args: tuple, kwargs: dict,
                   s: Settings) -> tuple[nn.Module, Any, dict[str, float]]:
    """One full candidate evaluation: rewrite, re-export, measure.  Returns the pruned module and ONNX."""
    pruned, apply_s = timed(lambda: apply_plan(model, analysis, plan, verify=False))
    proto, export_s = timed(lambda: export_onnx(pruned, args, kwargs, verify=False))
    _, measure_s = timed(lambda: measure_latency(proto, None, threads=s.threads, runs=s.candidate_runs,
                                                 warmup=s.candidate_warmup))
    return pruned, proto, {"apply": apply_s, "export": export_s, "measure": measure_s}


def prepare_template(row: Row, analysis: Any, plan: Any, s: Settings) -> OnnxTemplate | None:
    """Export the template (timed once); ``None`` with ``row.fast_error`` set if the fast path is n/a."""
    result, row.fast_error = attempt(lambda: timed(lambda: OnnxTemplate(analysis)))
    if result is None:
        return None
    template, row.template_s = result
    _, row.fast_error = attempt(lambda: template.candidate(plan))  # OnnxExportError: fast path cannot map the plan
    if row.fast_error:
        return None
    return template


def check_fast_path(template: OnnxTemplate, plan: Any, s: Settings) -> str | None:
    """Untimed check of the candidate against the pruned program (also a warm-up of the path)."""
    _, error = attempt(lambda: template.measure(plan, check=True, threads=s.threads, runs=3, warmup=0))
    return error


def run_candidates(row: Row, model: nn.Module, analysis: Any, plan: Any, args: tuple, kwargs: dict,
                   s: Settings) -> Any:
    """Fill the template / fast / full columns; return the pruned ONNX model (or ``None``)."""
    template = prepare_template(row, analysis, plan, s)
    check_error = check_fast_path(template, plan, s) if template is not None else None
    fast_times: list[tuple[float, float]] = []
    full_times: list[dict[str, float]] = []
    pruned_module, pruned_proto = None, None
    for _ in range(s.candidate_repeats):  # interleave the two paths so load drift hits both alike
        if template is not None and row.fast_error is None:
            result, row.fast_error = attempt(lambda: fast_path_eval(template, plan, s))
            fast_times += [result] if result is not None else []
        if row.full_error is None:
            result, row.full_error = attempt(lambda: full_path_eval(model, analysis, plan, args, kwargs, s))
            if result is not None:
                pruned_module, pruned_proto, breakdown = result
                full_times.append(breakdown)
    if fast_times and row.fast_error is None:
        row.fast_s = statistics.median(t for t, _ in fast_times)
        row.fast_latency_ms = statistics.median(ms for _, ms in fast_times)
        if check_error:  # it runs, but computes something else than the pruned program
            row.problems.append(f"fast-path check: {check_error}")
    if full_times and row.full_error is None:
        row.full_s = statistics.median(sum(b.values()) for b in full_times)
        row.full_breakdown_s = {k: statistics.median(b[k] for b in full_times) for k in full_times[0]}
    if pruned_module is not None:
        check_pruned(row, pruned_module, pruned_proto, analysis, plan, args, kwargs)
    return pruned_proto


def check_pruned(row: Row, pruned: nn.Module, proto: Any, analysis: Any, plan: Any, args: tuple,
                 kwargs: dict) -> None:
    """Untimed: pruned eager module vs pruned program, pruned ONNX vs pruned eager module."""
    _, error = attempt(lambda: verify_eager(pruned, analysis, plan))
    if error:
        row.problems.append(f"verify_eager: {error}")
    _, error = attempt(lambda: verify_onnx(proto, pruned, args, kwargs))
    if error:
        row.problems.append(f"pruned ONNX vs torch: {error}")


def run_latency(row: Row, model: nn.Module, pruned_proto: Any, args: tuple, kwargs: dict, s: Settings) -> None:
    original_proto = export_onnx(model, args, kwargs, verify=True)
    protos = [original_proto, pruned_proto]
    feeds = [make_feeds(make_session(p, s.threads), args, kwargs) for p in protos]
    row.original, row.pruned = interleaved_latency(protos, feeds, s)


def bench_model(row: Row, s: Settings) -> Row:
    model, inputs = models.get(row.model)
    args, kwargs = models.split_inputs(inputs)
    analysis, row.error = attempt(lambda: analyze(model, inputs))
    if analysis is None:
        return row
    plan, row.error = attempt(lambda: uniform_plan(analysis, s.ratio))
    if plan is None:
        return row
    costs, cost_error = attempt(lambda: cost_ratios(analysis, plan))
    if costs is not None:
        row.flops_ratio, row.params_ratio = costs
    else:
        row.problems.append(f"cost model: {cost_error}")
    pruned_proto = run_candidates(row, model, analysis, plan, args, kwargs, s)
    if pruned_proto is None:
        row.latency_error = row.full_error or "no pruned ONNX model"
        return row
    _, row.latency_error = attempt(lambda: run_latency(row, model, pruned_proto, args, kwargs, s))
    return row


def cost_ratios(analysis: Any, plan: Any) -> tuple[float, float]:
    cm = CostModel(analysis)
    widths = plan.widths(analysis)
    return cm.flops(widths) / cm.flops(), cm.params(widths) / cm.params()


def bench_model_limited(name: str, s: Settings) -> Row:
    """``bench_model`` under the per-model time limit; a timeout keeps the columns filled so far."""
    row = Row(name)
    try:
        with time_limit(s.timeout_s):
            return bench_model(row, s)
    except TimeoutError as exc:
        row.problems.append(f"timeout: {exc}")
    except Exception as exc:  # noqa: BLE001 - building the model itself failed
        row.error = _short_error(exc)
    return row


# --------------------------------------------------------------------------- table
COLUMNS = (
    "model", "FLOPs ratio", "params ratio", "orig med ms", "orig p10 ms", "pruned med ms", "pruned p10 ms",
    "latency ratio", "template s", "fast-path eval s", "full re-export eval s", "speed-up (full/fast)",
    "fast-path cand. med ms",
)


def _num(x: float | None, fmt: str = ".3f", missing: str = "-") -> str:
    return missing if x is None else format(x, fmt)


def _fail(error: str) -> str:
    return f"n/a ({error.split(':')[0][:REASON_WIDTH]})"


def row_cells(row: Row) -> list[str]:
    if row.error:
        return [row.model, f"error: {row.error[:80]}", *([""] * (len(COLUMNS) - 2))]
    lat_fail = _fail(row.latency_error) if row.latency_error else None
    fast_fail = _fail(row.fast_error) if row.fast_error else None
    full_fail = _fail(row.full_error) if row.full_error else None
    orig, pruned = row.original, row.pruned
    return [
        row.model + (" *" if row.problems else ""),
        _num(row.flops_ratio),
        _num(row.params_ratio),
        lat_fail or _num(orig and orig.median),
        lat_fail or _num(orig and orig.p10),
        lat_fail or _num(pruned and pruned.median),
        lat_fail or _num(pruned and pruned.p10),
        lat_fail or _num(row.latency_ratio),
        _num(row.template_s, ".2f"),
        fast_fail or _num(row.fast_s),
        full_fail or _num(row.full_s),
        _num(row.speedup, ".1f") + ("x" if row.speedup is not None else ""),
        fast_fail or _num(row.fast_latency_ms),
    ]


def format_table(rows: Sequence[Row]) -> str:
    body = [row_cells(r) for r in rows]
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(COLUMNS), "-+-".join("-" * w for w in widths), *(line(cells) for cells in body)]
    notes = [(r.model, what, err) for r in rows
             for what, err in (("error", r.error), ("latency", r.latency_error), ("fast path", r.fast_error),
                               ("full re-export", r.full_error)) if err]
    notes += [(r.model, "problem", p) for r in rows for p in r.problems]
    if notes:
        out += ["", "failures and problems (* = a correctness check failed; timings are still shown):"]
        out += [f"  {model} [{what}]: {err}" for model, what, err in notes]
    return "\n".join(out)


# --------------------------------------------------------------------------- goals
@dataclass
class Goal:
    description: str
    status: str  # "PASS" | "MISS" | "n/a"
    detail: str


def evaluate_goals(rows: Sequence[Row]) -> list[Goal]:
    description = f"fast path <= {FAST_PATH_GOAL_S:g} s per candidate on {FAST_PATH_GOAL_MODEL}"
    row = next((r for r in rows if r.model == FAST_PATH_GOAL_MODEL), None)
    if row is None:
        return [Goal(description, "n/a", "model not benchmarked")]
    if row.fast_s is None:
        return [Goal(description, "n/a", row.error or row.fast_error or "no timing")]
    detail = f"{row.fast_s:.3f} s per candidate"
    if row.full_s is not None:
        detail += f" (full re-export {row.full_s:.3f} s, {row.speedup:.1f}x)"
    if row.problems:
        detail += "; correctness problems, see above"
    return [Goal(description, "PASS" if row.fast_s <= FAST_PATH_GOAL_S else "MISS", detail)]


def format_goals(goals: Sequence[Goal]) -> str:
    width = max(len(g.description) for g in goals)
    return "\n".join(["goals:", *(f"  [{g.status:>4}] {g.description.ljust(width)}  {g.detail}" for g in goals)])


# --------------------------------------------------------------------------- main
def machine() -> dict[str, Any]:
    import onnx
    import onnxruntime

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_count": os.cpu_count(), "cpus_usable": affinity, "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def machine_line(m: dict[str, Any]) -> str:
    return (f"machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable), load average {load_average()}, "
            f"python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}")


def load_average() -> str:
    """1-minute load average (other processes on a shared machine inflate every timing)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def settings_line(s: Settings) -> str:
    return (f"settings: {100 * s.ratio:g}% uniform pruning; latency columns {s.runs} runs + {s.warmup} warm-up x "
            f"{s.rounds} interleaved rounds, {s.threads} ORT thread(s); candidate evals {s.candidate_runs} runs + "
            f"{s.candidate_warmup} warm-up, median of {s.candidate_repeats}")


def quiet() -> None:
    """Silence torch.onnx / torch.export warnings and log chatter (errors still surface as exceptions)."""
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # failed runs are reported in the table, not on stderr


def write_json(path: str, rows: Sequence[Row], goals: Sequence[Goal], s: Settings, m: dict[str, Any]) -> None:
    payload = {
        "machine": m,
        "settings": asdict(s),
        "rows": [{**asdict(r), "latency_ratio": r.latency_ratio, "speedup": r.speedup} for r in rows],
        "goals": [asdict(g) for g in goals],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    d = Settings()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", type=_csv, default=None, help="comma-separated zoo models (default: all)")
    parser.add_argument("--ratio", type=float, default=d.ratio, help="uniform pruning ratio (default 0.5)")
    parser.add_argument("--threads", type=int, default=d.threads, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--runs", type=int, default=d.runs, help="timed runs per round, latency columns")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="warm-up runs per round, latency columns")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="interleaved original/pruned rounds")
    parser.add_argument("--candidate-runs", type=int, default=d.candidate_runs,
                        help="timed runs in one candidate evaluation (fast and full path alike)")
    parser.add_argument("--candidate-warmup", type=int, default=d.candidate_warmup,
                        help="warm-up runs in one candidate evaluation")
    parser.add_argument("--candidate-repeats", type=int, default=d.candidate_repeats,
                        help="candidate evaluations per path; the median is reported")
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per model (0: no limit)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not 0.0 <= args.ratio < 1.0:
        parser.error("--ratio must be in [0, 1)")
    if min(args.runs, args.candidate_runs) < 3:
        parser.error("--runs and --candidate-runs must be >= 3")
    if min(args.threads, args.rounds, args.candidate_repeats) < 1 or min(args.warmup, args.candidate_warmup) < 0:
        parser.error("--threads, --rounds and --candidate-repeats must be >= 1, warm-ups >= 0")
    unknown = sorted(set(args.models or []) - set(models.names()))
    if unknown:
        parser.error(f"unknown models {unknown}; valid: {', '.join(models.names())}")
    settings = Settings(ratio=args.ratio, threads=args.threads, runs=args.runs, warmup=args.warmup,
                        rounds=args.rounds, candidate_runs=args.candidate_runs,
                        candidate_warmup=args.candidate_warmup, candidate_repeats=args.candidate_repeats,
                        timeout_s=args.timeout)
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    args, s = parse_args(argv)
    quiet()
    m = machine()
    m["load_average_start"] = load_average()
    print(machine_line(m))
    print(settings_line(s))
    rows: list[Row] = []
    for name in args.models if args.models is not None else models.names():
        t0 = time.perf_counter()
        rows.append(bench_model_limited(name, s))
        print(f"  {name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    goals = evaluate_goals(rows)
    m["load_average_end"] = load_average()
    print(f"load average at the end: {m['load_average_end']}")
    print()
    print(format_table(rows))
    print()
    print(format_goals(goals))
    if args.json:
        write_json(args.json, rows, goals, s, m)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
