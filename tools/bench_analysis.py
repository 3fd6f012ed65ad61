"""Analysis-speed benchmark: prunepass vs. Torch-Pruning, side by side, in one run.

For every model it times

* ours: ``capture()`` (torch.export, non-strict) and ``analyze_captured()`` (dataflow + groups);
* Torch-Pruning: ``DependencyGraph().build_dependency()`` plus enumerating ``get_all_groups()``;
* the "trace floor": ``make_fx`` (pre-dispatch, fake tensors) of the model alone, the tracer
  torch.export runs inside; no capture built on torch.export can cost less than this.

Each measurement runs ``--repeats`` times (ours and TP interleaved) and the median is reported.
One untimed warm-up of each side runs first, so one-time torch / export setup is not counted.
Timing hygiene: torch runs single-threaded by default (``--threads``), a full garbage collection
runs untimed before every timed phase, and a measurement over ``--timeout`` seconds is reported
as a failure.  The models are the repo's zoo (``models.names()``) plus generated deep residual
stacks ``resstack{N}``.

    python tools/bench_analysis.py                       # everything, 3 repeats
    python tools/bench_analysis.py --models resnet50,vit --depths 50,100 --repeats 1
    python tools/bench_analysis.py --json bench.json

The "goals" section after the table is a report: it prints PASS / MISS, it never raises.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from _timeout import time_limit  # noqa: E402 - sibling helper (tools/ is on sys.path)
from torch import nn
from torch.utils._pytree import tree_leaves

import models
from prunepass import analyze_captured, capture

DEFAULT_DEPTHS = (50, 100, 200)
RESSTACK_WIDTH = 32
RESSTACK_CLASSES = 10
REASON_WIDTH = 24  # characters of a failure reason shown inside a table cell
DEFAULT_TIMEOUT_S = 120.0  # per single measurement; Torch-Pruning's group enumeration can run away
LINEAR_TOLERANCE = 1.5  # "roughly linear": per-block cost at the deepest stack <= this x the shallowest


# --------------------------------------------------------------------------- generated models
class _ResBlock(nn.Module):
    """``x + bn(conv3x3(relu(bn(conv3x3(x)))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class ResStack(nn.Module):
    """Stem conv 3->C, ``blocks`` residual blocks of width C, global average pool, linear head."""

    def __init__(self, blocks: int, channels: int = RESSTACK_WIDTH, classes: int = RESSTACK_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(_ResBlock(channels) for _ in range(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(self.pool(x), 1))


def resstack_name(blocks: int) -> str:
    return f"resstack{blocks}"


def build_resstack(blocks: int) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    model = ResStack(blocks).eval()
    return model, (torch.randn(1, 3, 32, 32),)


@dataclass(frozen=True)
class Case:
    """One model to benchmark; ``blocks`` is set for the generated residual stacks."""

    name: str
    build: Callable[[], tuple[nn.Module, tuple]]
    blocks: int | None = None


def select_cases(model_names: Sequence[str], depths: Sequence[int]) -> list[Case]:
    cases = [Case(n, lambda n=n: models.get(n)) for n in model_names]
    cases += [Case(resstack_name(d), lambda d=d: build_resstack(d), blocks=d) for d in depths]
    return cases


# --------------------------------------------------------------------------- measurements
@dataclass
class Ours:
    export_s: float | None = None
    analysis_s: float | None = None
    reported_export_s: float | None = None  # Captured.export_seconds
    reported_analysis_s: float | None = None  # Analysis.seconds
    floor_s: float | None = None  # make_fx trace alone: the least any torch.export-based capture costs
    groups: int | None = None
    prunable: int | None = None
    error: str | None = None

    @property
    def total_s(self) -> float | None:
        if self.export_s is None or self.analysis_s is None:
            return None
        return self.export_s + self.analysis_s


@dataclass
class TorchPruning:
    seconds: float | None = None
    groups: int | None = None
    error: str | None = None


@dataclass
class Row:
    model: str
    blocks: int | None
    ours: Ours = field(default_factory=Ours)
    tp: TorchPruning = field(default_factory=TorchPruning)

    @property
    def analysis_ratio(self) -> float | None:
        return _ratio(self.ours.analysis_s, self.tp.seconds)

    @property
    def total_ratio(self) -> float | None:
        return _ratio(self.ours.total_s, self.tp.seconds)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _short_error(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:200]


# (export s, analysis s, Captured.export_seconds, Analysis.seconds, groups, prunable groups, trace floor s)
OursRun = tuple[float, float, float, float, int, int, float | None]
TpRun = tuple[float, int]  # (build + groups s, groups)


def time_trace_floor(model: nn.Module, inputs: tuple) -> float:
    """Seconds of the cheapest ATen-level trace PyTorch offers: ``make_fx`` (pre-dispatch, fake
    tensors) of ``functional_call`` -- the tracer inside torch.export without its wrapping
    (module fake-ification, signature, verifier).  No capture built on torch.export can cost less."""
    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    args, kwargs = models.split_inputs(inputs)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}

    def fn(state: dict, a: tuple, kw: dict) -> Any:
        return functional_call(model, state, a, kw)

    gc.collect()
    t0 = time.perf_counter()
    with torch.no_grad():
        make_fx(fn, pre_dispatch=True, tracing_mode="fake")(state, tuple(args), dict(kwargs))
    return time.perf_counter() - t0


def time_ours_once(model: nn.Module, inputs: tuple, floor: bool = True) -> OursRun:
    """One export + analysis; returns wall seconds of both, their self-reported seconds, and group counts.

    A full garbage collection runs (untimed) before each phase: a deep export leaves hundreds of
    thousands of GC-tracked objects, and the generation-2 collection they trigger would otherwise be
    charged to whichever phase happens to allocate next.
    """
    gc.collect()
    t0 = time.perf_counter()
    cap = capture(model, inputs)
    export_s = time.perf_counter() - t0
    gc.collect()
    t1 = time.perf_counter()
    analysis = analyze_captured(cap)
    analysis_s = time.perf_counter() - t1
    floor_s = None
    if floor:
        try:  # a reference measurement: its failure is not ours
            floor_s = time_trace_floor(model, inputs)
        except Exception:  # noqa: BLE001
            floor_s = None
    return (export_s, analysis_s, cap.export_seconds, analysis.seconds, len(analysis.groups),
            len(analysis.prunable_groups), floor_s)


TP_ROOT_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)


def output_layers(model: nn.Module, inputs: tuple) -> list[nn.Module]:
    """Conv / Linear layers whose output is returned by the model (classifier, LM or detect heads).

    Torch-Pruning is told to ignore them, as in its examples (``ignored_layers=[model.fc]``).
    """
    args, kwargs = models.split_inputs(inputs)
    produced: dict[int, nn.Module] = {}

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = module

    layers = [m for m in model.modules() if isinstance(m, TP_ROOT_TYPES)]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    returned = {id(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
    return [m for key, m in produced.items() if key in returned]


def time_tp_once(model: nn.Module, inputs: tuple, ignored: list[nn.Module]) -> TpRun:
    """One Torch-Pruning dependency-graph build + full group enumeration; returns (seconds, groups)."""
    import torch_pruning as tp

    args, kwargs = models.split_inputs(inputs)
    if kwargs:  # build_dependency takes a tuple (positional) or a dict (keyword); mixed needs forward_fn
        def forward_fn(m: nn.Module, _example: Any) -> Any:
            return m(*args, **kwargs)
    else:
        forward_fn = None
    gc.collect()
    with torch.enable_grad():
        t0 = time.perf_counter()
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=args, forward_fn=forward_fn, verbose=False
        )
        groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=TP_ROOT_TYPES))
        seconds = time.perf_counter() - t0
    return seconds, len(groups)


def summarize_ours(runs: Sequence[OursRun], error: str | None) -> Ours:
    if error is not None or not runs:
        return Ours(error=error or "no runs")
    export_s, analysis_s, rep_export, rep_analysis, groups, prunable, floor = zip(*runs, strict=True)
    floors = [f for f in floor if f is not None]
    return Ours(
        floor_s=statistics.median(floors) if floors else None,
        export_s=statistics.median(export_s),
        analysis_s=statistics.median(analysis_s),
        reported_export_s=statistics.median(rep_export),
        reported_analysis_s=statistics.median(rep_analysis),
        groups=groups[-1],
        prunable=prunable[-1],
    )


def summarize_tp(runs: Sequence[TpRun], error: str | None) -> TorchPruning:
    if error is not None or not runs:
        return TorchPruning(error=error or "no runs")
    return TorchPruning(seconds=statistics.median(s for s, _ in runs), groups=runs[-1][1])


def _attempt(fn: Callable[[], Any], timeout: float | None = None) -> tuple[Any, str | None]:
    """Run ``fn``; a failure or timeout is a result of the benchmark (``(None, reason)``), never a crash."""
    try:
        with time_limit(timeout):
            return fn(), None
    except Exception as exc:  # noqa: BLE001 - either side failing on a model is reported, not raised
        return None, _short_error(exc)


def run_case(case: Case, repeats: int, timeout: float | None = DEFAULT_TIMEOUT_S, floor: bool = True) -> Row:
    """Time both sides on one model; the repeats interleave ours and TP so load drift hits both alike."""
    model, inputs = case.build()
    ignored, tp_error = _attempt(lambda: output_layers(model, inputs))
    ours_runs: list[OursRun] = []
    tp_runs: list[TpRun] = []
    ours_error: str | None = None
    for _ in range(repeats):
        if ours_error is None:
            run, ours_error = _attempt(lambda: time_ours_once(model, inputs, floor), timeout)
            ours_runs += [run] if run is not None else []
        if tp_error is None:
            run, tp_error = _attempt(lambda: time_tp_once(model, inputs, ignored), timeout)
            tp_runs += [run] if run is not None else []
    return Row(case.name, case.blocks, summarize_ours(ours_runs, ours_error), summarize_tp(tp_runs, tp_error))


def warm_up() -> None:
    """Untimed export/analysis and Torch-Pruning build on a tiny stack: one-time torch setup."""
    run_case(Case("warm-up", lambda: build_resstack(2), blocks=2), repeats=1)


# --------------------------------------------------------------------------- table
COLUMNS = (
    "model", "export s", "our analysis s", "ours export+analysis s", "TP build+groups s",
    "analysis ratio (ours/TP)", "total ratio ((export+analysis)/TP)", "our groups (prunable)", "TP groups",
    "trace floor s (/TP)",
)


def _num(x: float | None, fmt: str = ".3f", missing: str = "-") -> str:
    return missing if x is None else format(x, fmt)


def _fail(error: str | None) -> str:
    reason = (error or "").split(":")[0]
    return f"fail ({reason[:REASON_WIDTH]})"


def row_cells(row: Row) -> list[str]:
    o, t = row.ours, row.tp
    ours_fail = _fail(o.error) if o.error else None
    tp_fail = _fail(t.error) if t.error else None
    return [
        row.model,
        ours_fail or _num(o.export_s),
        ours_fail or _num(o.analysis_s),
        ours_fail or _num(o.total_s),
        tp_fail or _num(t.seconds),
        _num(row.analysis_ratio, ".2f") + ("x" if row.analysis_ratio is not None else ""),
        _num(row.total_ratio, ".2f") + ("x" if row.total_ratio is not None else ""),
        ours_fail or f"{o.groups} ({o.prunable})",
        tp_fail or str(t.groups),
        "-" if o.floor_s is None else f"{o.floor_s:.3f} ({_num(_ratio(o.floor_s, t.seconds), '.2f')}x)",
    ]


def format_table(rows: Sequence[Row]) -> str:
    body = [row_cells(r) for r in rows]
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "-+-".join("-" * w for w in widths)
    out = [line(COLUMNS), rule, *(line(cells) for cells in body)]
    failures = [(r.model, side, err) for r in rows for side, err in (("ours", r.ours.error), ("TP", r.tp.error)) if err]
    if failures:
        out += ["", "failures:"]
        out += [f"  {model} [{side}]: {err}" for model, side, err in failures]
    return "\n".join(out)


# --------------------------------------------------------------------------- goals
@dataclass
class Goal:
    description: str
    status: str  # "PASS" | "MISS" | "n/a"
    detail: str


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def ratio_goal(rows: dict[str, Row], model: str, which: str, limit: float) -> Goal:
    label = "analysis" if which == "analysis" else "export+analysis"
    description = f"our {label} <= {limit:g}x TP on {model}"
    row = rows.get(model)
    if row is None:
        return Goal(description, "n/a", "model not benchmarked")
    ratio = row.analysis_ratio if which == "analysis" else row.total_ratio
    if ratio is None:
        why = row.ours.error or row.tp.error or "no timing"
        return Goal(description, "n/a", f"no ratio ({why})")
    ours = row.ours.analysis_s if which == "analysis" else row.ours.total_s
    detail = f"{ratio:.2f}x ({ours:.3f} s vs {row.tp.seconds:.3f} s)"
    floor = _ratio(row.ours.floor_s, row.tp.seconds)
    if which != "analysis" and floor is not None:
        detail += f"; make_fx trace alone {floor:.2f}x TP"
    return Goal(description, _verdict(ratio <= limit), detail)


def per_block(rows: Sequence[Row], cost: Callable[[Row], float | None]) -> dict[int, float]:
    out: dict[int, float] = {}
    for row in rows:
        seconds = cost(row)
        if row.blocks and seconds is not None:
            out[row.blocks] = seconds / row.blocks
    return out


def linearity_goal(label: str, costs: dict[int, float], checked: bool) -> Goal:
    depths = sorted(costs)
    listing = ", ".join(f"{d}: {costs[d] * 1e3:.2f} ms/block" for d in depths) or "no data"
    description = f"{label} roughly linear in depth"
    if len(depths) < 2:
        return Goal(description, "n/a" if checked else "info", f"{listing} (needs two depths)")
    lo, hi = depths[0], depths[-1]
    growth = costs[hi] / costs[lo]
    detail = f"{listing}; per-block {hi} vs {lo}: {growth:.2f}x"
    if not checked:
        return Goal(description, "info", detail)
    return Goal(
        f"{description} (per-block {hi} vs {lo} <= {LINEAR_TOLERANCE:g}x)",
        _verdict(growth <= LINEAR_TOLERANCE),
        detail,
    )


def evaluate_goals(rows: Sequence[Row]) -> list[Goal]:
    by_name = {r.model: r for r in rows}
    stacks = sorted((r for r in rows if r.blocks), key=lambda r: r.blocks or 0)
    deepest = resstack_name(stacks[-1].blocks) if stacks else resstack_name(max(DEFAULT_DEPTHS))
    return [
        ratio_goal(by_name, "resnet50", "analysis", 1.0),
        ratio_goal(by_name, "vit", "analysis", 1.0),
        ratio_goal(by_name, deepest, "total", 0.5),
        ratio_goal(by_name, "densenet", "total", 0.5),
        linearity_goal("our analysis", per_block(stacks, lambda r: r.ours.analysis_s), checked=True),
        linearity_goal("our export+analysis", per_block(stacks, lambda r: r.ours.total_s), checked=True),
        linearity_goal("TP build+groups", per_block(stacks, lambda r: r.tp.seconds), checked=False),
    ]


def format_goals(goals: Sequence[Goal]) -> str:
    width = max(len(g.description) for g in goals)
    lines = ["goals:"]
    lines += [f"  [{g.status:>4}] {g.description.ljust(width)}  {g.detail}" for g in goals]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def _versions() -> dict[str, str]:
    import torch_pruning as tp

    return {"torch": torch.__version__, "torch_pruning": getattr(tp, "__version__", "?"), "python": sys.version.split()[0]}


def write_json(path: str, rows: Sequence[Row], goals: Sequence[Goal], repeats: int, timeout: float) -> None:
    payload = {
        "repeats": repeats,
        "timeout_s": timeout,
        "torch_threads": torch.get_num_threads(),
        "statistic": "median",
        "versions": _versions(),
        "rows": [
            {**asdict(r), "ours_total_s": r.ours.total_s, "analysis_ratio": r.analysis_ratio, "total_ratio": r.total_ratio}
            for r in rows
        ],
        "goals": [asdict(g) for g in goals],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=_csv, default=None, help="comma-separated zoo models (default: all)")
    parser.add_argument(
        "--depths", type=lambda s: [int(d) for d in _csv(s)], default=list(DEFAULT_DEPTHS),
        help="comma-separated resstack depths in blocks (default: 50,100,200; empty string for none)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is reported")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S,
        help="seconds one measurement may take before it is reported as a failure (0: no limit)",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: Torch-Pruning runs a real forward, and on a busy machine "
        "multi-threaded kernels make its timings swing by 10x; 0 keeps torch's default)",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the 'trace floor' column (make_fx alone, the least a torch.export capture costs)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    unknown = sorted(set(args.models or []) - set(models.names()))
    if unknown:
        parser.error(f"unknown models {unknown}; valid: {', '.join(models.names())}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cases = select_cases(args.models if args.models is not None else models.names(), args.depths)
    print(
        f"warming up (untimed); then {len(cases)} models x {args.repeats} repeats, median, "
        f"{torch.get_num_threads()} torch thread(s)",
        file=sys.stderr,
    )
    warm_up()
    rows: list[Row] = []
    for case in cases:
        t0 = time.perf_counter()
        rows.append(run_case(case, args.repeats, args.timeout, floor=not args.no_floor))
        print(f"  {case.name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    goals = evaluate_goals(rows)
    print(format_table(rows))
    print()
    print(format_goals(goals))
    if args.json:
        write_json(args.json, rows, goals, args.repeats, args.timeout)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
