"""A face in the style of NVIDIA Model Optimizer's NAS / FastNAS pruning API, on prunepass's core.

Three entry points with the reference product's names, arguments and return shapes:

* :func:`profile` -- ``(is_all_sat, stats)``: FLOPs / params (and latency when asked) of the
  smallest, centroid and largest subnet of the search space, the max/min ratios, the search-space
  size and the number of configurable hparams.  No conversion step is needed: the search space
  is read from prunepass's analysis (every prunable channel group and its allowed widths).
* :func:`search` -- ``(subnet, state)``: finds the subnet that maximises ``score_func`` under
  the constraints.  The default ``"fastnas"`` strategy is :class:`BinarySearcher` (a per-group
  sensitivity map, then a binary search on the allowed score degradation); ``"knapsack"``,
  ``"target"`` and ``"optimal"`` run prunepass's own selectors through :class:`StrategySearcher`.
* :class:`BaseSearcher` -- the searcher life cycle (``reset_search``, ``before_search``,
  ``run_search``, ``after_search``, checkpoint save / load, forward loop, ``eval_score``), so
  users can add their own searchers.

Vocabulary: a *hparam* of the reference product is a prunepass channel *group* (``"g3"``); its
*choices* are the group's allowed widths (:func:`prunepass.select.constraints.allowed_widths`).

Constraints are ``{"flops": ..., "params": ..., "latency": ...}``; a value is an absolute upper
bound (FLOPs, parameter count, milliseconds) or a percentage string of the unpruned model
(``"60%"``); ``None`` only reports the metric.  FLOPs and params come from prunepass's exact cost
formulas (FLOPs = 2 x multiply-accumulates, as ``torch.utils.flop_counter`` counts them); latency
is measured with onnxruntime on this machine's CPU.

Differences from the reference product, on purpose:

* ``search`` modifies the model in place like the reference product (the returned subnet *is* the
  given model); pass ``config={"inplace": False}`` to get a pruned copy instead.
* extra config keys: ``strategy`` (``"fastnas"``, ``"knapsack"``, ``"target"``, ``"optimal"`` or a
  :class:`BaseSearcher` subclass), ``seed``, ``inplace``, ``channel_constraint`` (a
  :class:`~prunepass.select.constraints.ChannelConstraint` or its keyword dict; its ``rules``
  play the part of the reference product's per-layer rules: ``{"rules": {"layer4.*": None}}``
  keeps those groups out of the search space),
  ``max_choices`` (fastnas: widths tried per group for the sensitivity map) and
  ``strategy_kwargs`` (extra keyword arguments for the core selectors).
* ``BinarySearcher`` accepts several constraints at once (all must hold).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import random
import statistics
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, final

import numpy as np
import torch
from torch import nn

from prunepass.analysis import Analysis, analyze
from prunepass.costs import CostModel
from prunepass.importance import (
    Scores,
    calibrate,
    call_model,
    default_sample_to_model_inputs,
    finetune_bn,
    magnitude_scores,
)
from prunepass.plan import Plan, fingerprint
from prunepass.rewrite import apply_plan
from prunepass.select.constraints import ChannelConstraint, allowed_widths
from prunepass.select.targets import Evaluator, LatencyOracle, Target

log = logging.getLogger(__name__)

__all__ = [
    "SEARCHERS", "BaseSearcher", "BinarySearcher", "StrategySearcher", "profile", "search",
]

ConstraintsDict = dict[str, Any]
SearchConfig = dict[str, Any]
SearchStateDict = dict[str, Any]
ForwardLoop = Callable[[nn.Module], None]

METRICS = ("flops", "params", "latency")
_CHECKPOINT_FORMAT = "prunepass.faces.modelopt/1"


# ====================================================================== small helpers
def _num2hrb(x: float) -> str:
    """Human-readable number: 1.23M, 456.00K."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.2f}" if isinstance(x, float) and not float(x).is_integer() else f"{int(x)}"


def _fmt_metric(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g} ms" if metric == "latency" else _num2hrb(v)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Put the model in eval mode for the duration; restore every submodule's mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def _channel_constraint(value: Any) -> ChannelConstraint | None:
    if value is None or isinstance(value, ChannelConstraint):
        return value
    if isinstance(value, dict):
        return ChannelConstraint(**value)
    raise TypeError(f"channel_constraint must be a ChannelConstraint or a dict of its fields, got {type(value).__name__}")


def _search_space(analysis: Analysis, constraint: ChannelConstraint | None) -> dict[str, list[int]]:
    """Group name -> allowed widths (ascending; the last one is the group's full size)."""
    return {g.name: allowed_widths(g, constraint) for g in analysis.prunable_groups}


def _parse_constraints(constraints: ConstraintsDict | None) -> dict[str, Target | None]:
    """``{"flops": "60%", "params": 5e6, "latency": None}`` -> metric -> Target (None: report only)."""
    if constraints is None:
        return {}
    if not isinstance(constraints, dict):
        raise TypeError("constraints must be a dict like {'flops': '60%'} (constraint functions are not supported)")
    out: dict[str, Target | None] = {}
    for metric, value in constraints.items():
        if metric not in METRICS:
            raise ValueError(f"unsupported constraint {metric!r}; supported: {', '.join(METRICS)}")
        if value is None:
            out[metric] = None
            continue
        if isinstance(value, dict):
            raise ValueError(f"constraint {metric!r}: dict values are not supported; give a number or a percentage "
                             "string such as '60%'")
        text = value.strip() if isinstance(value, str) else repr(float(value))
        try:
            out[metric] = Target.parse(f"{metric}={text}")
        except ValueError as exc:
            raise ValueError(f"constraint {metric}={value!r}: {exc}") from None
    return out


def _latency_oracle(analysis: Analysis, deployment: dict[str, Any] | None) -> LatencyOracle:
    """Map a reference-style ``deployment`` dict onto prunepass's onnxruntime latency oracle."""
    dep = dict(deployment or {})
    runtime = str(dep.pop("runtime", "ORT") or "ORT")
    accelerator = str(dep.pop("accelerator", "CPU") or "CPU")
    if runtime.lower() not in ("ort", "onnxruntime"):
        raise ValueError(f"deployment runtime {runtime!r} is not supported: prunepass measures latency with "
                         "onnxruntime ('ORT')")
    if accelerator.lower() != "cpu":
        raise ValueError(f"deployment accelerator {accelerator!r} is not supported: latency is measured on this "
                         "machine's CPU")
    dep.pop("version", None)
    dep.pop("precision", None)
    allowed = {"threads", "runs", "warmup", "statistic"}
    unknown = set(dep) - allowed
    if unknown:
        raise ValueError(f"unknown deployment keys {sorted(unknown)}; supported: runtime, accelerator, "
                         f"{', '.join(sorted(allowed))}")
    kwargs = {k: (int(v) if k != "statistic" else str(v)) for k, v in dep.items()}
    return LatencyOracle(analysis, **kwargs)


def _satisfied(metric: str, value: float, bound: float | None) -> bool:
    """An upper bound, strictly (measured latencies too: noise is the user's margin to choose)."""
    return bound is None or value <= bound * (1.0 + 1e-9)


class _Space:
    """Search space + metrics of one analysed model (shared by ``profile`` and the searchers)."""

    def __init__(self, analysis: Analysis, constraints: ConstraintsDict | None, deployment: dict | None,
                 channel_constraint: ChannelConstraint | None) -> None:
        self.analysis = analysis
        self.targets = _parse_constraints(constraints)
        if deployment is not None and "latency" not in self.targets:
            self.targets["latency"] = None  # report it
        needs_latency = "latency" in self.targets
        oracle = _latency_oracle(analysis, deployment) if needs_latency else None
        self.evaluator = Evaluator(analysis, CostModel(analysis), oracle)
        self.cost: CostModel = self.evaluator.cost
        self.choices = _search_space(analysis, channel_constraint)
        self.metrics = ["flops", "params"] + (["latency"] if needs_latency else [])
        self.limits: dict[str, float | None] = {
            m: (t.absolute(self.evaluator.base(m)) if t is not None else None) for m, t in self.targets.items()
        }

    # ------------------------------------------------------------------ subnets
    def min_widths(self) -> dict[str, int]:
        return {n: c[0] for n, c in self.choices.items()}

    def max_widths(self) -> dict[str, int]:
        return {n: c[-1] for n, c in self.choices.items()}

    def centroid_widths(self) -> dict[str, int]:
        return {n: c[len(c) // 2] for n, c in self.choices.items()}

    def plan(self, widths: dict[str, int], scores: Any = None, **meta: Any) -> Plan:
        return Plan.from_widths(self.analysis, widths, scores, **meta)

    def value(self, metric: str, widths: dict[str, int]) -> float:
        if metric == "flops":
            return float(self.cost.flops(widths))
        if metric == "params":
            return float(self.cost.params(widths))
        if metric == "latency":
            return float(self.evaluator.value("latency", self.plan(widths)))
        raise ValueError(metric)

    def values(self, widths: dict[str, int], metrics: Iterable[str] | None = None) -> dict[str, float]:
        return {m: self.value(m, widths) for m in (metrics or self.metrics)}

    def satisfies(self, widths: dict[str, int]) -> bool:
        """All constraints hold (the cheap ones are checked first: latency is measured)."""
        for m in sorted(self.limits, key=lambda m: m == "latency"):
            if not _satisfied(m, self.value(m, widths), self.limits[m]):
                return False
        return True

    @property
    def size(self) -> int:
        return math.prod(len(c) for c in self.choices.values())

    @property
    def num_configurable(self) -> int:
        return sum(1 for c in self.choices.values() if len(c) > 1)


# ====================================================================== profile
def profile(model: nn.Module, dummy_input: Any = None, constraints: ConstraintsDict | None = None,
            deployment: dict[str, Any] | None = None, strict: bool = False, verbose: bool = True,
            use_centroid: bool = False, *, channel_constraint: ChannelConstraint | dict | None = None,
            seed: int = 0, num_samples: int = 30) -> tuple[bool, dict[str, Any]]:
    """Profile the search space of ``model``: the subnets' FLOPs / params and whether the
    constraints can be met.

    Args:
        model: any ``nn.Module`` (no conversion step is needed; the search space is every
            prunable channel group with its allowed widths).
        dummy_input: example arguments of ``model.forward`` in the ``dummy_input`` conventions
            (``x``; ``(x, y)``; ``(x, {"mask": m})``).  Required: prunepass captures the model.
        constraints: ``{"flops": "60%", "params": 5e6, "latency": 2.5}`` upper bounds; a
            percentage is relative to the unpruned (max) subnet; ``None`` values only report.
        deployment: ``{"runtime": "ORT", "accelerator": "CPU", "threads": 1}``: also measure the
            onnxruntime latency (ms) of the min, centroid and max subnet.
        strict: raise ``ValueError`` when the constraints cannot be satisfied.
        verbose: print the profile table and the search space.
        use_centroid: report the deterministic centroid (every group at its middle choice)
            instead of the median over ``num_samples`` random subnets.  Latency is always
            measured on the deterministic centroid.
        channel_constraint: the per-group minimum width / step defining the choices, and
            ``rules`` per group (``None``: the group is not searched).
        seed: seed of the random subnets (``use_centroid=False``).

    Returns:
        ``(is_all_sat, stats)``: ``is_all_sat`` says whether every constraint holds for the
        smallest subnet (so some subnet satisfies them all).  ``stats`` has ``"min"``,
        ``"centroid"`` and ``"max"`` (metric -> value), ``"max/min ratio"`` (metric -> ratio),
        ``"ratio to max"`` (subnet -> metric -> fraction of the max subnet), ``"constraints"``
        (metric -> upper bound and satisfiability), ``"number of configurable hparams"`` and
        ``"search space size"``.
    """
    if dummy_input is None:
        raise ValueError("profile needs dummy_input: prunepass captures the model to find its search space")
    _parse_constraints(constraints)  # fail fast, before the capture
    with _eval_mode(model):
        analysis = analyze(model, dummy_input)
        space = _Space(analysis, constraints, deployment, _channel_constraint(channel_constraint))
        return _profile_space(space, strict=strict, verbose=verbose, use_centroid=use_centroid, seed=seed,
                              num_samples=num_samples)


def _profile_space(space: _Space, *, strict: bool, verbose: bool, use_centroid: bool, seed: int = 0,
                   num_samples: int = 30, emit: Callable[[str], None] = print) -> tuple[bool, dict[str, Any]]:
    cheap = [m for m in space.metrics if m != "latency"]
    subnets = {"min": space.min_widths(), "centroid": space.centroid_widths(), "max": space.max_widths()}
    info: dict[str, dict[str, float]] = {k: space.values(w) for k, w in subnets.items()}
    if not use_centroid and space.num_configurable:
        rng = random.Random(seed)
        samples = [{n: rng.choice(c) for n, c in space.choices.items()} for _ in range(num_samples)]
        for m in cheap:
            info["centroid"][m] = float(statistics.median(space.value(m, w) for w in samples))
    stats: dict[str, Any] = {k: dict(v) for k, v in info.items()}
    stats["max/min ratio"] = {m: (info["max"][m] / info["min"][m] if info["min"][m] else math.inf)
                              for m in space.metrics}
    stats["ratio to max"] = {k: {m: (info[k][m] / info["max"][m] if info["max"][m] else 1.0) for m in space.metrics}
                             for k in ("min", "centroid", "max")}
    is_all_sat = True
    stats["constraints"] = {}
    for m, bound in space.limits.items():
        sat = _satisfied(m, info["min"][m], bound)
        is_all_sat &= sat
        stats["constraints"][m] = {"upper_bound": bound, "satisfiable": sat}
    stats["number of configurable hparams"] = space.num_configurable
    stats["search space size"] = space.size
    if verbose:
        emit(format_profile(stats, space.choices))
    if not is_all_sat:
        bad = [m for m, c in stats["constraints"].items() if not c["satisfiable"]]
        msg = ("NOT all constraints can be satisfied within the search space: "
               + ", ".join(f"{m} <= {_fmt_metric(m, space.limits[m])} but the smallest subnet has "
                           f"{_fmt_metric(m, info['min'][m])}" for m in bad)
               + ". Relax the constraints or the channel constraint (minimum widths).")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)
    return is_all_sat, stats


def format_profile(stats: dict[str, Any], choices: dict[str, list[int]] | None = None) -> str:
    """The profile as a text table (what ``profile(verbose=True)`` prints)."""
    subnets = ("min", "centroid", "max")
    metrics = list(stats["max"])
    lines = [f"Profiling the following subnets from the given model: {subnets}.", "-" * 80,
             "Profiling Results",
             f"{'Constraint':<12}" + "".join(f"{s:>14}" for s in subnets) + f"{'max/min ratio':>16}"]
    for m in metrics:
        lines.append(f"{m:<12}" + "".join(f"{_fmt_metric(m, stats[s][m]):>14}" for s in subnets)
                     + f"{stats['max/min ratio'][m]:>16.2f}")
    if stats.get("constraints"):
        lines += ["", "Constraints Evaluation",
                  f"{'Constraint':<12}{'Upper Bound':>14}{'Satisfiable Upper Bound':>26}"]
        for m, c in stats["constraints"].items():
            lines.append(f"{m:<12}{_fmt_metric(m, c['upper_bound']):>14}"
                         f"{c['satisfiable']!s:>26}")
    if choices:
        lines += ["", "Search Space Summary", "-" * 80]
        for name, c in choices.items():
            shown = c if len(c) <= 8 else [*c[:4], "...", *c[-3:]]
            mark = "*" if len(c) > 1 else " "
            lines.append(f"{mark} {name:<8}[{', '.join(map(str, shown))}]")
    lines.append("-" * 80)
    lines.append(f"Number of configurable hparams: {stats['number of configurable hparams']}")
    lines.append(f"Total size of the search space: {float(stats['search space size']):8.2e}")
    if stats.get("constraints") and all(c["satisfiable"] for c in stats["constraints"].values()):
        lines.append("Note: all constraints can be satisfied within the search space!")
    return "\n".join(lines)


# ====================================================================== searchers
class BaseSearcher(ABC):
    """A searcher's life cycle: set up, load a checkpoint, search, finish.

    :meth:`search` (final) resets the searcher, sanitises the config, captures the model
    (``self.analysis``, the search space ``self.choices`` and the constraint bounds
    ``self.limits``), builds ``self.forward_loop``, loads the checkpoint if one exists, then
    runs :meth:`before_search`, :meth:`run_search` and :meth:`after_search`, and returns
    ``(subnet, state)``.

    A subclass declares its checkpointed state in :attr:`default_state_dict` (every key becomes
    an attribute, saved by :meth:`save_search_checkpoint` and restored by
    :meth:`load_search_checkpoint`) and implements :meth:`run_search`, which must set
    ``self.best["widths"]`` (group name -> width, from ``self.choices``).  The base
    :meth:`after_search` then builds the final subnet (in place unless ``inplace=False``),
    recalibrates BatchNorm when data is given, evaluates ``score_func`` on it and fills
    ``self.best`` with ``"plan"`` (JSON dict), ``"score"`` and ``"metrics"``.

    Helpers for subclasses: :meth:`satisfies` (all constraints hold for widths),
    :meth:`metrics` (FLOPs / params / latency of widths), :meth:`build_subnet` (a pruned copy,
    BatchNorm recalibrated), :meth:`eval_score`, ``self.importance`` (per-channel scores).

    Example -- a searcher that keeps the same fraction of every group, largest first::

        from prunepass.faces.modelopt import BaseSearcher

        class UniformSearcher(BaseSearcher):
            @property
            def default_state_dict(self):
                return {"tried": {}}  # fraction -> satisfied?, checkpointed

            def run_search(self):
                for frac in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
                    widths = {n: min(c, key=lambda w: abs(w - frac * c[-1])) for n, c in self.choices.items()}
                    self.tried[frac] = self.satisfies(widths)
                    self.save_search_checkpoint()
                    if self.tried[frac]:
                        self.best["widths"] = widths
                        return
                self.best["widths"] = {n: c[0] for n, c in self.choices.items()}

        subnet, state = search(model, {"flops": "50%"}, x, {"strategy": UniformSearcher})
        # or: UniformSearcher().search(model, {"flops": "50%"}, x, config)
    """

    model: nn.Module
    config: SearchConfig
    constraints: ConstraintsDict
    deployment: dict[str, str] | None
    dummy_input: Any
    forward_loop: ForwardLoop | None
    analysis: Analysis
    choices: dict[str, list[int]]
    limits: dict[str, float | None]
    best: SearchStateDict
    subnet: nn.Module | None

    @final
    def __init__(self) -> None:
        """No arguments: everything a searcher needs comes through :meth:`search`."""
        super().__init__()
        self.num_score_evaluations = 0
        self._space: _Space | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def default_search_config(self) -> SearchConfig:
        """Every accepted config key with its default."""
        return {
            "checkpoint": None,
            "verbose": True,
            "forward_loop": None,
            "data_loader": None,
            "collect_func": None,
            "max_iter_data_loader": None,
            "score_func": None,
            "loss_func": None,
            "deployment": None,
            # prunepass extensions
            "strategy": "fastnas",
            "seed": 0,
            "inplace": True,
            "channel_constraint": None,
        }

    @property
    @abstractmethod
    def default_state_dict(self) -> SearchStateDict:
        """The checkpointed state: key -> initial value (each key becomes an attribute)."""

    def sanitize_search_config(self, config: SearchConfig | None) -> SearchConfig:
        """Fill in defaults and reject unknown keys and conflicting data arguments."""
        defaults = self.default_search_config
        config = {**defaults, **(config or {})}
        unknown = config.keys() - defaults.keys()
        if unknown:
            raise ValueError(f"{type(self).__name__}: unexpected config keys {sorted(unknown)}; "
                             f"accepted: {sorted(defaults)}")
        if config["forward_loop"] is not None and (config["data_loader"] is not None
                                                   or config["collect_func"] is not None):
            raise ValueError("provide either forward_loop or data_loader (+ collect_func), not both")
        loader = config["data_loader"]
        if loader is not None and iter(loader) is loader:
            raise ValueError("data_loader must be re-iterable (a DataLoader or a list of batches), not a one-shot "
                             "iterator: it is run once per evaluated subnet")
        if config["loss_func"] is not None and config["data_loader"] is None:
            raise ValueError("loss_func needs a data_loader to compute gradient scores")
        for key in ("score_func", "loss_func", "forward_loop", "collect_func"):
            if config[key] is not None and not callable(config[key]):
                raise TypeError(f"config[{key!r}] must be callable")
        config["verbose"] = bool(config["verbose"])
        return config

    # ------------------------------------------------------------------ life cycle
    @final
    def search(self, model: nn.Module, constraints: ConstraintsDict, dummy_input: Any = None,
               config: SearchConfig | None = None) -> tuple[nn.Module, SearchStateDict]:
        """Search ``model`` for the subnet with the best ``score_func`` under ``constraints``.

        Returns ``(subnet, state)``: the pruned model (the given model itself unless
        ``config["inplace"]`` is False) and the search result (``state["widths"]``,
        ``state["plan"]``, ``state["score"]``, ``state["metrics"]`` and the searcher's state)."""
        is_training = model.training
        self.reset_search()
        self.model = model
        self.config = self.sanitize_search_config(config)
        self.deployment = self.config["deployment"]
        self.constraints = dict(constraints or {})
        self.dummy_input = dummy_input
        if dummy_input is None:
            raise ValueError("search needs dummy_input: prunepass captures the model to find its search space")
        if not any(v is not None for v in _parse_constraints(self.constraints).values()):
            raise ValueError("search needs at least one constraint with a bound, e.g. {'flops': '60%'}")
        with _eval_mode(model):
            self.analysis = analyze(model, dummy_input)
            self._space = _Space(self.analysis, self.constraints, self.deployment,
                                 _channel_constraint(self.config["channel_constraint"]))
            self.choices = self._space.choices
            self.limits = self._space.limits
            self.forward_loop = self.construct_forward_loop(silent=not self.config["verbose"])
            self.load_search_checkpoint()
            self.before_search()
            self.run_search()
            self.after_search()
        subnet = self.subnet if self.subnet is not None else model
        if subnet is not model:  # a copy made in eval mode: give it the model's modes
            modes = {name: m.training for name, m in model.named_modules()}
            for name, m in subnet.named_modules():
                m.training = modes.get(name, is_training)
        return subnet, self.best

    def reset_search(self) -> None:
        """Clear the result and set every state key to its default."""
        self.best = {}
        self.subnet = None
        self.num_score_evaluations = 0
        self._importance: Any = None
        for key, val in self.default_state_dict.items():
            setattr(self, key, copy.deepcopy(val))

    def before_search(self) -> None:
        """Check the constraints can be met (``ValueError`` if not); print the profile if verbose."""
        assert self._space is not None
        _profile_space(self._space, strict=True, verbose=self.config["verbose"], use_centroid=True,
                       emit=self._print)

    @abstractmethod
    def run_search(self) -> None:
        """The search itself; must set ``self.best["widths"]``."""

    def after_search(self) -> None:
        """Build the chosen subnet, recalibrate BatchNorm, score it and fill ``self.best``."""
        if "widths" not in self.best:
            raise RuntimeError(f"{type(self).__name__}.run_search did not set best['widths']")
        widths = {n: int(w) for n, w in self.best["widths"].items() if n in self.choices}
        plan = self._space.plan(widths, self.importance, searcher=type(self).__name__,
                                constraints={k: str(v) for k, v in self.constraints.items()})
        # verified on a copy first, so a model the eager rewrite cannot follow is never left half-pruned
        subnet = apply_plan(self.model, self.analysis, plan, inplace=False, verify=True)
        if self.config["inplace"]:
            subnet = apply_plan(self.model, self.analysis, plan, inplace=True, verify=False)
        subnet.eval()
        self.recalibrate(subnet)
        self.subnet = subnet
        self.best["widths"] = widths
        self.best["plan"] = plan.to_dict()
        self.best["metrics"] = self._space.values(widths)
        self.best["constraints"] = dict(self.limits)
        self.best["score"] = self.eval_score(model=subnet) if self.has_score else None
        self.best["num_score_evaluations"] = self.num_score_evaluations
        self.best = {**copy.deepcopy(self.state_dict()), **self.best}

    # ------------------------------------------------------------------ scores and data
    @property
    def has_score(self) -> bool:
        return self.config["score_func"] is not None

    def eval_score(self, silent: bool = True, model: nn.Module | None = None) -> float:
        """``score_func`` of ``model`` (default ``self.model``) in eval mode; stdout is
        silenced unless ``silent=False``."""
        if not self.has_score:
            raise ValueError(f"{type(self).__name__} needs config['score_func'] (model -> float, higher is better)")
        target = self.model if model is None else model
        self.num_score_evaluations += 1
        with _eval_mode(target), (contextlib.redirect_stdout(io.StringIO()) if silent else contextlib.nullcontext()):
            return float(self.config["score_func"](target))

    def construct_forward_loop(self, silent: bool = True, progress_bar_msg: str | None = None,
                               max_iter_data_loader: int | None = None,
                               post_process_fn: Callable | bool = False) -> ForwardLoop | None:
        """A callable running the model over the data: ``config["forward_loop"]`` as given, or
        a loop over ``data_loader`` (at most ``max_iter_data_loader`` batches; ``collect_func``
        maps a batch to the model inputs in the ``dummy_input`` conventions, default: the first
        element of a ``(x, y)`` batch).  ``post_process_fn``, if callable, gets each
        ``(output, batch)``.  ``None`` when no data is configured."""
        loader, loop = self.config["data_loader"], self.config["forward_loop"]
        if loader is None and loop is None:
            return None
        limit = max_iter_data_loader if max_iter_data_loader is not None else self.config["max_iter_data_loader"]
        collect = self.config["collect_func"] or default_sample_to_model_inputs
        entry = self.analysis.captured.entry_point if hasattr(self, "analysis") else "forward"

        def forward_loop(m: nn.Module) -> None:
            with contextlib.redirect_stdout(io.StringIO()) if silent else contextlib.nullcontext():
                if loop is not None:
                    loop(m)
                    return
                if progress_bar_msg and not silent:
                    self._print(progress_bar_msg)
                with torch.no_grad():
                    for i, batch in enumerate(loader):
                        if limit is not None and i >= limit:
                            break
                        out = call_model(m, collect(batch), entry)
                        if callable(post_process_fn):
                            post_process_fn(out, batch)

        return forward_loop

    def recalibrate(self, subnet: nn.Module) -> None:
        """Re-estimate the BatchNorm statistics of a pruned subnet on the configured data
        (``data_loader`` via :func:`prunepass.importance.finetune_bn`, or ``forward_loop``).
        Does nothing without data or BatchNorm layers."""
        loader = self.config["data_loader"]
        if loader is not None:
            finetune_bn(subnet, loader, steps=self.config["max_iter_data_loader"],
                        sample_to_model_inputs=self.config["collect_func"] or default_sample_to_model_inputs,
                        entry_point=self.analysis.captured.entry_point)
        elif self.forward_loop is not None:
            _recalibrate_bn_with_loop(subnet, self.forward_loop)

    @property
    def importance(self) -> Any:
        """Per-channel importance (group -> scores) ordering which channels a width keeps:
        gradient (Taylor) scores when ``loss_func`` and ``data_loader`` are given, else weight
        magnitudes.  Computed once per search."""
        if self._importance is None:
            cfg = self.config
            if cfg["loss_func"] is not None and cfg["data_loader"] is not None:
                scores: Scores = calibrate(self.model, self.analysis, cfg["data_loader"], cfg["loss_func"],
                                           steps=cfg["max_iter_data_loader"],
                                           sample_to_model_inputs=cfg["collect_func"] or default_sample_to_model_inputs)
            else:
                scores = magnitude_scores(self.model, self.analysis)
            self._importance = scores
        return self._importance

    # ------------------------------------------------------------------ metrics for subclasses
    def metrics(self, widths: dict[str, int]) -> dict[str, float]:
        """FLOPs, params (and latency if constrained) of the subnet with these widths."""
        return self._space.values(widths)

    def satisfies(self, widths: dict[str, int]) -> bool:
        """Whether the subnet with these widths meets every constraint."""
        return self._space.satisfies(widths)

    def build_subnet(self, widths: dict[str, int], verify: bool = False) -> nn.Module:
        """A pruned copy of the model (the model itself is untouched), BatchNorm recalibrated."""
        plan = self._space.plan({n: w for n, w in widths.items() if n in self.choices}, self.importance)
        subnet = apply_plan(self.model, self.analysis, plan, inplace=False, verify=verify)
        subnet.eval()
        self.recalibrate(subnet)
        return subnet

    # ------------------------------------------------------------------ state and checkpoints
    @final
    def state_dict(self) -> SearchStateDict:
        """The checkpointed state (the keys of :attr:`default_state_dict`)."""
        return {key: getattr(self, key) for key in self.default_state_dict}

    def load_search_checkpoint(self) -> bool:
        """Restore the state from ``config["checkpoint"]`` if the file exists; ``True`` if loaded.

        The checkpoint must come from the same searcher and architecture (``ValueError``
        otherwise).  Only plain Python data is loaded (``torch.load(weights_only=True)``)."""
        path = self.config["checkpoint"]
        if path is None or not os.path.exists(path):
            return False
        data = torch.load(path, weights_only=True)
        if not isinstance(data, dict) or data.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a prunepass searcher checkpoint")
        if data.get("searcher") != type(self).__name__:
            raise ValueError(f"{path} was written by {data.get('searcher')}, not {type(self).__name__}; "
                             "use another checkpoint path or delete the file")
        if data.get("fingerprint") != fingerprint(self.analysis):
            raise ValueError(f"{path} was written for a different architecture; use another checkpoint path")
        state = data.get("state", {})
        if state.keys() != self.default_state_dict.keys():
            raise ValueError(f"{path}: state keys {sorted(state)} do not match {sorted(self.default_state_dict)}")
        for key, val in state.items():
            setattr(self, key, val)
        self._print(f"Loaded searcher state from {path}.")
        return True

    def save_search_checkpoint(self) -> None:
        """Write the state to ``config["checkpoint"]`` (atomically; no-op without a path)."""
        path = self.config["checkpoint"]
        if path is None:
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        data = {"format": _CHECKPOINT_FORMAT, "searcher": type(self).__name__,
                "fingerprint": fingerprint(self.analysis), "state": self.state_dict()}
        tmp = f"{path}.tmp"
        torch.save(data, tmp)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ output
    def _print(self, msg: str) -> None:
        # verbose searches report at WARNING so progress shows with default logging settings
        log.log(logging.WARNING if self.config.get("verbose") else logging.DEBUG, msg)


def _recalibrate_bn_with_loop(model: nn.Module, forward_loop: ForwardLoop) -> None:
    """Like :func:`prunepass.importance.finetune_bn`, driven by a user forward loop."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        with torch.no_grad():
            forward_loop(model)
    finally:
        for bn, mom in zip(bns, momenta, strict=True):
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode


def _subsample(choices: list[int], k: int) -> list[int]:
    """Up to ``k`` choices evenly spread from the smallest to the largest (both kept)."""
    if len(choices) <= k:
        return list(choices)
    idx = sorted({int(round(i)) for i in np.linspace(0, len(choices) - 1, max(k, 2))})
    return [choices[i] for i in idx]


class BinarySearcher(BaseSearcher):
    """FastNAS: a sensitivity map, then a binary search on the allowed score degradation.

    1. ``original_score`` = ``score_func`` of the unpruned model.
    2. Sensitivity map: for every configurable group and each of up to ``max_choices`` of its
       widths (evenly spread, smallest and full included), the subnet with only that group
       pruned is built and scored; ``sensitivity_map[group][width]`` = original score - score,
       made monotone (a narrower width never degrades less).  Once a width costs nothing, the
       wider ones are not evaluated.  The checkpoint is written after every evaluation, and a
       resumed search skips the finished ones.
    3. Binary search over the degradation values: at threshold ``t`` every group takes its
       narrowest width whose degradation is ``<= t``; the smallest ``t`` meeting all
       constraints wins (the best estimated score among the subnets the map can express).
    4. The chosen subnet is built, recalibrated and scored once more (``state["score"]``).
    """

    sensitivity_map: dict[str, dict[int, float]]
    original_score: float | None
    min_degrade: float | None
    max_degrade: float | None
    middle_value: float | None
    threshold: float | None
    channel_importance: dict[str, list[float]]
    history: list[dict[str, Any]]

    @property
    def default_search_config(self) -> SearchConfig:
        return {**super().default_search_config, "max_choices": 5}

    @property
    def default_state_dict(self) -> SearchStateDict:
        return {
            "sensitivity_map": {},
            "original_score": None,
            "min_degrade": None,
            "max_degrade": None,
            "middle_value": None,
            "threshold": None,
            "channel_importance": {},
            "history": [],
        }

    def sanitize_search_config(self, config: SearchConfig | None) -> SearchConfig:
        config = super().sanitize_search_config(config)
        if config["score_func"] is None:
            raise ValueError("the fastnas strategy needs config['score_func'] (model -> float, higher is better)")
        if int(config["max_choices"]) < 2:
            raise ValueError("max_choices must be >= 2")
        return config

    def load_search_checkpoint(self) -> bool:
        """Load the sensitivity map, the original score and the channel importance; the binary
        search itself is cheap and always redone."""
        loaded = super().load_search_checkpoint()
        if loaded:
            keep = ("sensitivity_map", "original_score", "channel_importance")
            for key, val in self.default_state_dict.items():
                if key not in keep:
                    setattr(self, key, copy.deepcopy(val))
        return loaded

    def before_search(self) -> None:
        """Check the constraints, fix the channel importance, build the sensitivity map."""
        super().before_search()
        if self.channel_importance:  # from the checkpoint: the resumed run keeps the same channels
            self._importance = {n: np.asarray(v, dtype=float) for n, v in self.channel_importance.items()}
        else:
            imp = self.importance
            self.channel_importance = {n: [float(x) for x in np.asarray(imp[n])] for n in self.choices}
        self._build_sensitivity_map()
        values = [v for per in self.sensitivity_map.values() for v in per.values()] or [0.0]
        self.min_degrade, self.max_degrade = min(values), max(values)

    def after_search(self) -> None:
        super().after_search()
        self.best.pop("channel_importance", None)  # large and already reflected in best["plan"]

    def _candidates(self) -> dict[str, list[int]]:
        k = int(self.config["max_choices"])
        return {n: _subsample(c, k) for n, c in self.choices.items() if len(c) > 1}

    def _build_sensitivity_map(self) -> None:
        cands = self._candidates()
        if self.original_score is None:
            # with data, the unpruned model is recalibrated like every candidate (on a copy)
            has_data = self.config["data_loader"] is not None or self.forward_loop is not None
            self.original_score = self.eval_score(model=self.build_subnet({}) if has_data else None)
            self.save_search_checkpoint()
        total = sum(len(c) - 1 for c in cands.values())
        done = sum(1 for n, c in cands.items() for w in c[:-1] if w in self.sensitivity_map.get(n, {}))
        if done < total:
            self._print(f"Collecting sensitivity statistics: {total - done} of {total} subnet evaluations to go.")
        t0 = time.perf_counter()
        for name, widths in cands.items():
            current = dict(self.sensitivity_map.get(name, {}))
            if set(current) != set(widths):
                current = {w: v for w, v in current.items() if w in widths}
            full = widths[-1]
            reached_zero = False
            for w in widths:
                if w == full:
                    current[w] = 0.0
                elif w in current:
                    pass  # evaluated before the restart
                elif reached_zero:
                    current[w] = 0.0
                else:
                    score = self.eval_score(model=self.build_subnet({name: w}))
                    current[w] = float(self.original_score - score)
                    done += 1
                    self._print(f"  [{done}/{total}] {name} width {w}/{full}: degradation {current[w]:.4g}")
                if current[w] < 1e-5 and w != full:
                    reached_zero = True
                self.sensitivity_map[name] = dict(current)
                self.save_search_checkpoint()
            # monotone: a narrower width degrades at least as much as any wider one
            prev = 0.0
            for w in sorted(current, reverse=True):
                prev = current[w] = max(current[w], prev)
            self.sensitivity_map[name] = dict(sorted(current.items()))
            self.save_search_checkpoint()
        if total:
            log.debug("sensitivity map: %d evaluations in %.2fs", total, time.perf_counter() - t0)

    def widths_at(self, threshold: float) -> dict[str, int]:
        """Every group at its narrowest width degrading the score by at most ``threshold``."""
        out = {}
        for name, c in self.choices.items():
            per = self.sensitivity_map.get(name)
            out[name] = c[-1] if not per else min(w for w, v in per.items() if v <= threshold + 1e-12)
        return out

    def run_search(self) -> None:
        """Binary search for the smallest degradation threshold that meets the constraints."""
        values = sorted({float(v) for per in self.sensitivity_map.values() for v in per.values()} | {0.0})
        lo, hi = 0, len(values) - 1
        if not self.satisfies(self.widths_at(values[hi])):
            raise ValueError("the constraints cannot be met with the sampled widths; raise max_choices or relax them")
        while lo < hi:
            mid = (lo + hi) // 2
            self.middle_value = values[mid]
            ok = self.satisfies(self.widths_at(values[mid]))
            self.history.append({"threshold": values[mid], "is_satisfied": ok})
            if ok:
                hi = mid
            else:
                lo = mid + 1
            self.min_degrade, self.max_degrade = values[lo], values[hi]
        self.threshold = values[lo]
        widths = self.widths_at(self.threshold)
        self.best["widths"] = widths
        self.best["estimated_score"] = float(self.original_score - self.threshold)
        self.save_search_checkpoint()
        self._print(f"Binary search: degradation threshold {self.threshold:.4g} -> "
                    + ", ".join(f"{m}={_fmt_metric(m, v)}" for m, v in self.metrics(widths).items()))


class StrategySearcher(BaseSearcher):
    """prunepass's own selectors behind the searcher interface: ``"knapsack"`` (MILP maximising
    the kept importance), ``"target"`` (binary search on one global importance threshold) or
    ``"optimal"`` (evolutionary search, checkpointed next to ``checkpoint`` as
    ``<checkpoint>.<metric>-<bound>.evolution.json``).

    The selectors take one target each.  With several constraints, each is selected for in
    turn; when the result violates another constraint, the bound is bisected downwards until
    every constraint holds; of these candidates the one with the best ``score_func`` (else the
    most kept importance) wins."""

    @property
    def default_search_config(self) -> SearchConfig:
        return {**super().default_search_config, "strategy": "knapsack", "strategy_kwargs": {}}

    @property
    def default_state_dict(self) -> SearchStateDict:
        return {"candidates": []}

    def sanitize_search_config(self, config: SearchConfig | None) -> SearchConfig:
        config = super().sanitize_search_config(config)
        if config["strategy"] not in ("knapsack", "target", "optimal"):
            raise ValueError(f"StrategySearcher runs 'knapsack', 'target' or 'optimal', not {config['strategy']!r}")
        return config

    def run_search(self) -> None:
        from prunepass.select.strategies import ranking_scores

        strategy = self.config["strategy"]
        imp = self.importance
        scores = imp if isinstance(imp, Scores) else Scores({n: np.asarray(v) for n, v in imp.items()}, "magnitude")
        rank = ranking_scores(scores)
        self.candidates = []
        finals = []
        for metric, target in self._space.targets.items():
            if target is None:
                continue
            best = self._add_candidate(scores, rank, metric, target)
            if not best["satisfied"] and len(self.limits) > 1:
                # another constraint is violated: bisect this constraint's bound below its goal
                lo, hi = 0.0, target.absolute(self._space.evaluator.base(metric))
                best = None
                for _ in range(self.max_rounds):
                    mid = 0.5 * (lo + hi)
                    cand = self._add_candidate(scores, rank, metric, Target(metric, mid, False))
                    if cand["satisfied"]:
                        lo, best = mid, cand
                    else:
                        hi = mid
            if best is not None and best["satisfied"]:
                finals.append(best)
        if not finals:
            raise ValueError(f"strategy {strategy!r} found no subnet meeting every constraint {self.constraints}")
        if len(finals) > 1 and self.has_score:
            for c in finals:
                c["score"] = self.eval_score(model=self.build_subnet(c["widths"]))
            self.save_search_checkpoint()
            chosen = max(finals, key=lambda c: c["score"])
        else:
            chosen = max(finals, key=lambda c: c["importance"])
        self.best["widths"] = dict(chosen["widths"])

    def _add_candidate(self, scores: Scores, rank: dict, metric: str, target: Target) -> dict[str, Any]:
        widths = self._select(scores, metric, target)
        cand = {"metric": metric, "target": str(target), "widths": widths, "satisfied": self.satisfies(widths),
                "importance": sum(float(np.sort(rank[n])[::-1][:w].sum()) for n, w in widths.items() if n in rank)}
        self.candidates.append(cand)
        self.save_search_checkpoint()
        return cand

    #: bisection steps per constraint when the selection for it violates another constraint
    max_rounds = 8

    def _select(self, scores: Scores, metric: str, target: Target) -> dict[str, int]:
        from prunepass.select.strategies import evolutionary_plan, knapsack_plan, target_plan

        strategy = self.config["strategy"]
        kwargs = dict(self.config["strategy_kwargs"] or {})
        cc = _channel_constraint(self.config["channel_constraint"])
        evaluator = self._space.evaluator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unmet target is reported by the constraint check
            if strategy == "knapsack":
                plan, _ = knapsack_plan(self.analysis, scores, target, evaluator, cc, **kwargs)
            elif strategy == "target":
                plan, _ = target_plan(self.analysis, scores, target, evaluator, cc, **kwargs)
            else:
                ckpt = self.config["checkpoint"]
                kwargs.setdefault("seed", int(self.config["seed"]))
                path = f"{ckpt}.{metric}-{target.value:.6g}.evolution.json" if ckpt else None
                plan, _ = evolutionary_plan(self.analysis, scores, target, evaluator, cc, checkpoint=path, **kwargs)
        pw = plan.widths(self.analysis)
        return {n: pw[n] for n in self.choices}


#: strategy name -> searcher class used by :func:`search`
SEARCHERS: dict[str, type[BaseSearcher]] = {
    "fastnas": BinarySearcher,
    "knapsack": StrategySearcher,
    "target": StrategySearcher,
    "optimal": StrategySearcher,
}


def search(model: nn.Module, constraints: ConstraintsDict, dummy_input: Any,
           config: SearchConfig | None = None) -> tuple[nn.Module, SearchStateDict]:
    """Search ``model`` for the subnet with the best ``score_func`` meeting ``constraints``.

    Args:
        model: the model to prune (no conversion needed).  Pruned in place unless
            ``config["inplace"]`` is False.
        constraints: ``{"flops": "60%"}``, ``{"params": 5e6}``, ``{"latency": "70%"}`` (ms or a
            percentage of the unpruned model, measured with onnxruntime); several may be given.
        dummy_input: example arguments of ``model.forward`` (``x``, ``(x, y)`` or
            ``(x, {"kw": v})``).
        config: ``checkpoint`` (path; state is saved after every evaluation and resumed from if
            the file exists), ``verbose``, ``forward_loop`` or ``data_loader`` + ``collect_func``
            + ``max_iter_data_loader`` (BatchNorm recalibration of every evaluated subnet),
            ``score_func`` (model -> float, maximised; required by ``"fastnas"``), ``loss_func``
            (``loss_func(output, batch)``: gradient channel importance), ``deployment`` (latency
            settings) and the prunepass extensions ``strategy`` (``"fastnas"`` default,
            ``"knapsack"``, ``"target"``, ``"optimal"`` or a :class:`BaseSearcher` subclass),
            ``seed``, ``inplace``, ``channel_constraint``, ``max_choices`` (fastnas) and
            ``strategy_kwargs`` (core selectors).

    Returns:
        ``(subnet, state)``: ``state`` holds ``"widths"`` (group -> kept channels), ``"plan"``
        (``Plan.to_dict()``; rebuild with ``Plan.from_dict`` + ``apply_plan``), ``"score"``,
        ``"metrics"`` (FLOPs / params / latency of the subnet), ``"constraints"`` (absolute bounds)
        and the searcher's state (for fastnas the ``"sensitivity_map"`` and ``"original_score"``).
    """
    strategy = (config or {}).get("strategy", "fastnas")
    if isinstance(strategy, type) and issubclass(strategy, BaseSearcher):
        cls = strategy
        config = {**(config or {}), "strategy": strategy.__name__}
    elif strategy in SEARCHERS:
        cls = SEARCHERS[strategy]
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(SEARCHERS)} or pass a "
                         "BaseSearcher subclass")
    return cls().search(model, constraints, dummy_input, config)
