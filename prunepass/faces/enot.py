"""ENOT-style pruning face: ``PruningCalibrator``, ``calibrate_and_prune_model_*``, label selectors,
channel-selection constraints and inspection tables, all running on prunepass's core.

Channel *labels* are global integers: every group ``g`` of the analysis owns the labels
``range(*g.labels)`` (prunable groups and unprunable groups alike, in group order).  A
:class:`Label` is an ``int`` that also answers ``.label`` so code written for label objects
(``label.label % 2``) keeps working; anything that takes labels accepts plain ints too.

Conventions that differ from the reference product:

* ``sample_to_model_inputs`` may return either ``(args_tuple, kwargs_dict)`` (the reference
  convention) or a prunepass ``dummy_input`` (``x``, ``(x, y)`` or ``(x, {"mask": m})``);
  the re-exported :func:`default_sample_to_model_inputs` returns the latter (``sample[0]``).
* the high-level functions (``calibrate_and_prune_model*``) calibrate and prune a **copy**: the
  model passed in is left untouched (weights, BatchNorm statistics, gradients and modes).
* there are no channel "gates" in prunepass: a gate is a prunable group.  Groups are never
  shared, so ``drop_shared_gates`` has nothing to drop.
* :class:`OptimalPruningLabelSelector` runs prunepass's evolutionary search, not SCBO: the
  SCBO-only arguments (``batch_size``, ``device``, ``dtype``, ``scbo_kwargs``) are accepted
  and ignored.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from prunepass.analysis import Analysis, analyze
from prunepass.capture import WRAPPER_PREFIX, resolve_entry_point
from prunepass.errors import LatencyMeasurementError
from prunepass.importance import Calibrator, Scores, calibrate, magnitude_scores
from prunepass.importance import default_sample_to_model_inputs as default_sample_to_model_inputs
from prunepass.importance import default_sample_to_n_samples as default_sample_to_n_samples
from prunepass.importance import finetune_bn as _finetune_bn
from prunepass.ir import Group
from prunepass.plan import Plan
from prunepass.rewrite import apply_plan
from prunepass.select.constraints import ChannelConstraint
from prunepass.select.strategies import evolutionary_plan, kept_value, knapsack_plan, ranking_scores
from prunepass.select.targets import Evaluator, Target
from prunepass.tables import LabelFilterInfo as LabelFilterInfo
from prunepass.tables import get_label_filters as _get_label_filters
from prunepass.tables import tabulate_label_dependencies as _tabulate_label_dependencies
from prunepass.tables import tabulate_label_filters as _tabulate_label_filters
from prunepass.tables import tabulate_module_dependencies as _tabulate_module_dependencies
from prunepass.tables import tabulate_unprunable_groups as _tabulate_unprunable_groups

log = logging.getLogger(__name__)

__all__ = [
    "ChannelsSelectorConstraint", "DefaultChannelsSelectorConstraint", "DummyChannelsSelectorConstraint",
    "GlobalLatencyPruningLabelSelector", "GlobalPruningLabelSelectorByChannels", "KnapsackPruningLabelSelector",
    "Label", "LabelFilterInfo", "LatencyMeasurementError", "ModelPruningInfo", "OptimalPruningLabelSelector",
    "PruningCalibrator", "PruningLabelSelector", "ScorePruningLabelSelector", "TargetLatencyMixin",
    "UniformPruningLabelSelector", "calibrate_and_prune_model", "calibrate_and_prune_model_equal",
    "calibrate_and_prune_model_optimal", "calibrate_model_for_pruning", "default_sample_to_model_inputs",
    "default_sample_to_n_samples", "get_label_filters", "get_module_name_by_tracing_node",
    "get_tracing_node_by_module_name", "prune_model", "tabulate_label_dependencies", "tabulate_label_filters",
    "tabulate_module_dependencies", "tabulate_unprunable_groups",
]


# ====================================================================== labels and pruning info
class Label(int):
    """A global channel label: an ``int`` that also exposes ``.label``."""

    __slots__ = ()

    @property
    def label(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"Label({int(self)})"


def _as_int(label: Any) -> int:
    return int(getattr(label, "label", label))


class ModelPruningInfo:
    """Pruning-related information about one model: the prunepass :class:`~prunepass.Analysis`
    (captured graph, prunable and unprunable channel groups, their labels) and the channel
    importance :class:`~prunepass.importance.Scores` (magnitude scores when none are given)."""

    def __init__(self, analysis: Analysis, scores: Scores | None = None) -> None:
        if not isinstance(analysis, Analysis):
            raise TypeError(f"ModelPruningInfo wraps a prunepass Analysis, got {type(analysis).__name__}")
        self.analysis = analysis
        self.scores = scores if scores is not None else magnitude_scores(analysis.model, analysis)

    # ---------------------------------------------------------------- groups
    @property
    def groups(self) -> tuple[Group, ...]:
        return self.analysis.groups

    @property
    def prunable_groups(self) -> list[Group]:
        return self.analysis.prunable_groups

    @property
    def unprunable_groups(self) -> list[Group]:
        return self.analysis.unprunable_groups

    @property
    def graph(self) -> fx.Graph:
        """The captured (``torch.export``) graph."""
        return self.analysis.flow.graph

    @property
    def entry_point(self) -> str:
        return self.analysis.captured.entry_point

    # ---------------------------------------------------------------- labels
    @staticmethod
    def labels_of_group(group: Group) -> tuple[Label, ...]:
        return tuple(Label(i) for i in range(*group.labels))

    @property
    def prunable_labels(self) -> list[Label]:
        return [lab for g in self.prunable_groups for lab in self.labels_of_group(g)]

    @property
    def unprunable_labels(self) -> list[Label]:
        return [lab for g in self.unprunable_groups for lab in self.labels_of_group(g)]

    @property
    def n_labels(self) -> int:
        return self.analysis.groups[-1].labels[1] if self.analysis.groups else 0

    def group_of_label(self, label: Any) -> tuple[Group, int]:
        """The group owning ``label`` and the channel index inside it."""
        return self.analysis.group_of_label(_as_int(label))

    def label_score(self, label: Any) -> float | None:
        """Raw (not normalised) importance of one label; ``None`` for unscored (unprunable) labels."""
        g, i = self.group_of_label(label)
        return float(self.scores.per_group[g.name][i]) if g.name in self.scores.per_group else None

    def label_scores(self) -> dict[Label, float]:
        out: dict[Label, float] = {}
        for g in self.prunable_groups:
            if g.name in self.scores.per_group:
                out.update(zip(self.labels_of_group(g), map(float, self.scores.per_group[g.name]), strict=True))
        return out

    def __repr__(self) -> str:
        n = sum(g.size for g in self.prunable_groups)
        return (f"ModelPruningInfo(entry_point={self.entry_point!r}, prunable_groups={len(self.prunable_groups)}, "
                f"unprunable_groups={len(self.unprunable_groups)}, prunable_labels={n}, "
                f"criterion={self.scores.criterion!r})")


def _info(pruning_info: ModelPruningInfo | Analysis) -> ModelPruningInfo:
    if isinstance(pruning_info, ModelPruningInfo):
        return pruning_info
    if isinstance(pruning_info, Analysis):
        return ModelPruningInfo(pruning_info)
    raise TypeError(f"expected ModelPruningInfo (or a prunepass Analysis), got {type(pruning_info).__name__}")


def _analysis(pruning_info: ModelPruningInfo | Analysis) -> Analysis:
    if isinstance(pruning_info, ModelPruningInfo):
        return pruning_info.analysis
    if isinstance(pruning_info, Analysis):
        return pruning_info
    raise TypeError(f"expected ModelPruningInfo (or a prunepass Analysis), got {type(pruning_info).__name__}")


# ====================================================================== sample conventions
def _as_dummy_input(value: Any) -> Any:
    """``(args, kwargs)`` (reference convention) -> prunepass ``dummy_input``; else unchanged."""
    if (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple)
            and isinstance(value[1], dict) and all(isinstance(k, str) for k in value[1])):
        args, kwargs = value
        return (*args, dict(kwargs))
    return value


def _adapt_inputs(sample_to_model_inputs: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(sample_to_model_inputs)
    def adapted(sample: Any) -> Any:
        return _as_dummy_input(sample_to_model_inputs(sample))

    return adapted


# ====================================================================== calibration
class PruningCalibrator:
    """Context manager that captures the model on its first call inside the context and then
    gathers Taylor channel importance from the user's own ``loss.backward()`` calls::

        calibrator = PruningCalibrator(model)
        with calibrator:
            for x, y in loader:
                loss_function(model(x), y).backward()
        pruning_info = calibrator.pruning_info

    The first call of ``entry_point`` provides the example inputs for ``torch.export``.
    Nothing is left behind on exit: no hooks, no gradients, ``requires_grad`` flags restored.
    """

    def __init__(self, model: nn.Module, entry_point: str = "forward", max_prunable_labels: int = 4096) -> None:
        self._model = model
        self._entry_point = entry_point
        self._max_prunable_labels = max_prunable_labels
        self._pruning_info: ModelPruningInfo | None = None
        self._analysis: Analysis | None = None
        self._calibrator: Calibrator | None = None
        self._hook: Any = None
        self._patched: tuple[nn.Module, str, bool, Any] | None = None
        self._busy = False
        self._active = False

    @property
    def pruning_info(self) -> ModelPruningInfo | None:
        """Pruning information; ``None`` before the context ends, or when the model was not
        called (or no backward pass happened) inside it."""
        return self._pruning_info

    def __enter__(self) -> PruningCalibrator:
        if self._active:
            raise RuntimeError("this PruningCalibrator is already active; contexts do not nest")
        sub_path, method, fn = resolve_entry_point(self._model, self._entry_point)
        owner = self._model.get_submodule(sub_path) if sub_path else self._model
        self._pruning_info = self._analysis = self._calibrator = None
        if method == "forward":
            self._hook = owner.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        else:
            had_own = method in owner.__dict__
            previous = owner.__dict__.get(method)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                self._on_first_call(args, kwargs)
                return fn(*args, **kwargs)

            object.__setattr__(owner, method, wrapper)
            self._patched = (owner, method, had_own, previous)
        self._active = True
        return self

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._on_first_call(args, kwargs)

    def _uninstall(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._patched is not None:
            owner, method, had_own, previous = self._patched
            if had_own:
                object.__setattr__(owner, method, previous)
            else:
                object.__delattr__(owner, method)
            self._patched = None

    def _on_first_call(self, args: tuple, kwargs: dict) -> None:
        if self._busy or self._analysis is not None:
            return  # torch.export calls the entry point again: do not recurse
        self._busy = True
        try:
            self._uninstall()
            self._analysis = analyze(self._model, (*args, dict(kwargs)), self._entry_point,
                                     max_prunable_labels=self._max_prunable_labels)
            calibrator = Calibrator(self._model, self._analysis, "taylor")
            calibrator.__enter__()
            self._calibrator = calibrator
        finally:
            self._busy = False

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._uninstall()
        self._active = False
        calibrator, self._calibrator = self._calibrator, None
        if calibrator is None:
            if exc_type is None:
                warnings.warn(f"PruningCalibrator: the model's {self._entry_point!r} was never called inside the "
                              "context, so nothing was calibrated (pruning_info is None)", stacklevel=2)
            return
        calibrator.__exit__(exc_type, exc, tb)
        if exc_type is not None:
            return
        if calibrator.steps == 0:
            warnings.warn("PruningCalibrator: no backward pass reached the prunable parameters inside the context "
                          "(call loss.backward() on each batch); pruning_info is None", stacklevel=2)
            return
        assert self._analysis is not None and calibrator.scores is not None
        self._pruning_info = ModelPruningInfo(self._analysis, calibrator.scores)


def calibrate_model_for_pruning(
    model: nn.Module,
    dataloader: Iterable,
    loss_function: Callable[[Any, Any], torch.Tensor],
    n_steps: int | None = None,
    epochs: int = 1,
    sample_to_n_samples: Callable[[Any], int] = default_sample_to_n_samples,
    sample_to_model_inputs: Callable[[Any], Any] = default_sample_to_model_inputs,
    show_tqdm: bool = False,
    entry_point: str = "forward",
    max_prunable_labels: int = 4096,
) -> ModelPruningInfo:
    """Capture ``model`` (example inputs: the first batch of ``dataloader``), find its prunable
    channels and estimate their Taylor importance over ``n_steps`` batches (or ``epochs``).
    ``loss_function(model_output, sample)`` must return a scalar tensor.  The model is left as
    it was (no gradients, same ``requires_grad`` and modes)."""
    to_inputs = _adapt_inputs(sample_to_model_inputs)
    try:
        first = next(iter(dataloader))
    except StopIteration:
        raise ValueError("the dataloader produced no batch: calibration needs at least one") from None
    analysis = analyze(model, to_inputs(first), entry_point, max_prunable_labels=max_prunable_labels)
    scores = calibrate(model, analysis, dataloader, loss_function, criterion="taylor", steps=n_steps, epochs=epochs,
                       sample_to_model_inputs=to_inputs, sample_to_n_samples=sample_to_n_samples,
                       show_progress=show_tqdm, entry_point=entry_point)
    return ModelPruningInfo(analysis, scores)


# ====================================================================== pruning
def _prune(model: nn.Module, pruning_info: ModelPruningInfo | Analysis, prune_labels: Iterable[Any], *,
           inplace: bool, verify: bool) -> nn.Module:
    analysis = _analysis(pruning_info)
    plan = Plan.from_prune_labels(analysis, [_as_int(lab) for lab in prune_labels])
    return apply_plan(model, analysis, plan, inplace=inplace, verify=verify)


def prune_model(model: nn.Module, pruning_info: ModelPruningInfo, prune_labels: Sequence[Any],
                inplace: bool = True) -> nn.Module:
    """Remove the channels ``prune_labels`` (global labels) from ``model`` and return it
    (``inplace=False``: a pruned copy, the model is untouched)."""
    return _prune(model, pruning_info, prune_labels, inplace=inplace, verify=True)


# ====================================================================== channel constraints
class ChannelsSelectorConstraint(ABC):
    """How many channels of a group may be pruned: ``(low, high, step)`` from :meth:`_get`."""

    @abstractmethod
    def _get(self, number_of_channels: int) -> tuple[int, int, int]:
        """``low``: fewest channels to prune, ``high``: most, ``step``: discretisation."""

    def get(self, number_of_channels: int) -> tuple[int, int, int]:
        low, high, step = (int(v) for v in self._get(int(number_of_channels)))
        high = max(0, min(high, number_of_channels))
        low = max(0, min(low, high))
        return low, high, max(1, step)

    def apply(self, prune_n: int, number_of_channels: int) -> int:
        """Clamp ``prune_n`` to ``[low, high]`` and round it down onto the ``low + k * step`` grid."""
        low, high, step = self.get(number_of_channels)
        n = max(low, min(int(prune_n), high))
        return low + (n - low) // step * step

    def _as_channel_constraint(self) -> ChannelConstraint:
        return _SelectorChannelConstraint(self)


class DefaultChannelsSelectorConstraint(ChannelsSelectorConstraint):
    """Keep at least ``max(absolute_min_channels, int(relative_min_channels * n))`` channels
    (all of them when the group is smaller); step ``fixed_step``, else 1 up to 64 channels and
    4 above."""

    def __init__(self, absolute_min_channels: int = 16, relative_min_channels: float = 0.25,
                 fixed_step: int | None = None) -> None:
        self._absolute_min_channels = absolute_min_channels
        self._relative_min_channels = relative_min_channels
        self._fixed_step = fixed_step

    def _get(self, number_of_channels: int) -> tuple[int, int, int]:
        keep_at_least = max(self._absolute_min_channels, int(self._relative_min_channels * number_of_channels))
        high = max(0, number_of_channels - keep_at_least)
        if self._fixed_step is None:
            step = 4 if number_of_channels > 64 else 1
        else:
            step = self._fixed_step
        return 0, high, step

    def __repr__(self) -> str:
        return (f"DefaultChannelsSelectorConstraint(absolute_min_channels={self._absolute_min_channels}, "
                f"relative_min_channels={self._relative_min_channels}, fixed_step={self._fixed_step})")


class DummyChannelsSelectorConstraint(ChannelsSelectorConstraint):
    """No constraint: anything but the last channel may be pruned, step 1."""

    def _get(self, number_of_channels: int) -> tuple[int, int, int]:
        return 0, max(0, number_of_channels - 1), 1

    def __repr__(self) -> str:
        return "DummyChannelsSelectorConstraint()"


class _SelectorChannelConstraint(ChannelConstraint):
    """prunepass :class:`ChannelConstraint` driven by a :class:`ChannelsSelectorConstraint`.

    prunepass always allows a group to stay whole, so a ``low > 0`` (forced pruning) cannot be
    expressed and is ignored; the step applies to kept widths (multiples of ``step``)."""

    def __init__(self, selector: ChannelsSelectorConstraint) -> None:
        super().__init__()
        object.__setattr__(self, "selector", selector)

    def min_for(self, group: Group) -> int:
        _, high, _ = self.selector.get(group.size)  # type: ignore[attr-defined]
        return max(1, min(group.size, group.size - high))

    def step_for(self, group: Group) -> int:
        return self.selector.get(group.size)[2]  # type: ignore[attr-defined]


# ====================================================================== label selectors
class PruningLabelSelector(ABC):
    """Base class of label selectors: :meth:`select` returns the labels to prune."""

    @abstractmethod
    def select(self, model: nn.Module, pruning_info: ModelPruningInfo) -> list[Label]:
        """Labels to prune (may take long, depending on the selector)."""

    @staticmethod
    def extract_labels_info(pruning_info: ModelPruningInfo, sort_labels: bool = True, drop_shared_gates: bool = True,
                            normalize_score: bool = True, eps: float = 1e-7,
                            ) -> tuple[list[tuple[Label, ...]], dict[Label, float]]:
        """Labels of every prunable group (sorted by ascending score with ``sort_labels``) and
        ``{label: score}`` (divided by the network-wide total with ``normalize_score``).
        prunepass groups are never shared, so ``drop_shared_gates`` changes nothing."""
        del drop_shared_gates
        info = _info(pruning_info)
        scores = info.scores.normalized(eps) if normalize_score else info.scores
        labels_by_gates: list[tuple[Label, ...]] = []
        labels_score: dict[Label, float] = {}
        for g in info.prunable_groups:
            if g.name not in scores.per_group:
                continue
            values = np.asarray(scores.per_group[g.name], dtype=float)
            labels = info.labels_of_group(g)
            labels_score.update(zip(labels, map(float, values), strict=True))
            if sort_labels:
                labels = tuple(labels[i] for i in sorted(range(g.size), key=lambda i: (values[i], i)))
            labels_by_gates.append(labels)
        return labels_by_gates, labels_score

    @staticmethod
    def get_most_important_labels(sorted_labels_by_gates: list[tuple[Label, ...]]) -> set[Label]:
        """The highest-scoring label of every group (never pruned by the global selectors)."""
        return {gate[-1] for gate in sorted_labels_by_gates if gate}


class ScorePruningLabelSelector(PruningLabelSelector):
    """Selectors working on :meth:`extract_labels_info` output only: implement :meth:`_select`."""

    @abstractmethod
    def _select(self, labels_by_gates: list[tuple[Label, ...]], labels_score: dict[Label, float]) -> list[Label]:
        """Labels to prune."""

    def select(self, model: nn.Module, pruning_info: ModelPruningInfo) -> list[Label]:
        del model
        labels_by_gates, labels_score = self.extract_labels_info(pruning_info)
        return list(self._select(labels_by_gates, labels_score))


class UniformPruningLabelSelector(ScorePruningLabelSelector):
    """Prune the same fraction of every prunable group: keep the nearest whole number of
    channels to ``(1 - pruning_ratio) * size`` (ties keep more, at least one), dropping the
    lowest-scoring ones."""

    def __init__(self, pruning_ratio: float) -> None:
        if not 0.0 <= pruning_ratio < 1.0:
            raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
        self.pruning_ratio = pruning_ratio

    def _select(self, labels_by_gates: list[tuple[Label, ...]], labels_score: dict[Label, float]) -> list[Label]:
        out: list[Label] = []
        for gate in labels_by_gates:
            n = len(gate)
            keep = min(n, max(1, math.floor(n * (1.0 - self.pruning_ratio) + 0.5)))
            out.extend(gate[:n - keep])
        return out


class GlobalPruningLabelSelectorByChannels(ScorePruningLabelSelector):
    """Prune the network-wide least important labels: a count (``>= 1``) or a fraction of all
    prunable labels (``0 < x < 1``).  The best label of every group is always kept."""

    def __init__(self, n_channels_or_ratio: int | float) -> None:
        if n_channels_or_ratio < 0:
            raise ValueError(f"n_channels_or_ratio must be >= 0, got {n_channels_or_ratio}")
        self.n_channels_or_ratio = n_channels_or_ratio

    def _select(self, labels_by_gates: list[tuple[Label, ...]], labels_score: dict[Label, float]) -> list[Label]:
        total = sum(len(g) for g in labels_by_gates)
        x = self.n_channels_or_ratio
        n = int(round(x * total)) if 0 < x < 1 else int(x)
        keep = self.get_most_important_labels(labels_by_gates)
        candidates = sorted((lab for g in labels_by_gates for lab in g if lab not in keep),
                            key=lambda lab: (labels_score[lab], lab))
        if n > len(candidates):
            warnings.warn(f"asked to prune {n} labels but only {len(candidates)} can go (every group keeps its "
                          "most important channel)", stacklevel=3)
        return candidates[:n]


class TargetLatencyMixin:
    """Holds ``target_latency`` and the user's ``latency_calculation_function``."""

    def __init__(self, target_latency: float, latency_calculation_function: Callable[[nn.Module], float]) -> None:
        if not target_latency > 0:
            raise ValueError(f"target_latency must be positive, got {target_latency}")
        self.target_latency = float(target_latency)
        self.latency_calculation_function = latency_calculation_function


def _global_order(pruning_info: ModelPruningInfo) -> list[Label]:
    labels_by_gates, scores = PruningLabelSelector.extract_labels_info(pruning_info)
    keep = PruningLabelSelector.get_most_important_labels(labels_by_gates)
    return sorted((lab for g in labels_by_gates for lab in g if lab not in keep), key=lambda lab: (scores[lab], lab))


class GlobalLatencyPruningLabelSelector(PruningLabelSelector, TargetLatencyMixin):
    """Binary search on a global score threshold: prune the fewest least-important labels
    (network-wide) whose pruned model meets ``target_latency``.  ``selector_cb(latency,
    target_latency)`` is called after every probe; returning True stops the search (the
    smallest fast-enough selection seen so far is returned, else the largest selection).  A
    candidate whose measurement raises :class:`LatencyMeasurementError` counts as too slow."""

    def __init__(self, target_latency: float, latency_calculation_function: Callable[[nn.Module], float],
                 selector_cb: Callable[[float, float], bool] | None = None) -> None:
        TargetLatencyMixin.__init__(self, target_latency, latency_calculation_function)
        self.selector_cb = selector_cb

    def select(self, model: nn.Module, pruning_info: ModelPruningInfo) -> list[Label]:
        order = _global_order(pruning_info)
        measured: dict[int, float] = {}
        stop = False

        def probe(k: int) -> float:
            nonlocal stop
            if k not in measured:
                try:
                    pruned = _prune(model, pruning_info, order[:k], inplace=False, verify=False)
                    measured[k] = float(self.latency_calculation_function(pruned))
                except LatencyMeasurementError as exc:
                    log.warning("latency of a candidate (%d labels pruned) could not be measured: %s", k, exc)
                    measured[k] = math.inf  # infeasible: look for a smaller model
                if self.selector_cb is not None and self.selector_cb(measured[k], self.target_latency):
                    stop = True
            return measured[k]

        goal = self.target_latency
        if probe(0) <= goal:
            return []
        lo, hi = 0, len(order)  # lo: too slow; hi: assumed fast enough (checked below if never probed)
        while hi - lo > 1 and not stop:
            mid = (lo + hi) // 2
            if probe(mid) <= goal:
                hi = mid
            else:  # too slow, or not measurable: prune more
                lo = mid
        feasible = sorted(k for k, v in measured.items() if v <= goal)
        if not feasible and not stop and len(order) not in measured and probe(len(order)) <= goal:
            feasible = [len(order)]
        if feasible:
            return order[:feasible[0]]
        if not stop:
            warnings.warn(f"target latency {goal:g} not reached even with every prunable label but one per group "
                          "removed; returning that selection", stacklevel=2)
        return order


class _UserLatencyEvaluator(Evaluator):
    """prunepass :class:`Evaluator` whose ``latency`` is the user's function applied to the
    model pruned by the plan (and to the unpruned model for the base value).

    A candidate whose measurement raises :class:`LatencyMeasurementError` is infeasible: it gets
    ``inf`` (``penalize=False``) or a finite value above the goal (``penalize=True``, for the
    knapsack's budget refinement), and is never returned as the answer."""

    def __init__(self, model: nn.Module, info: ModelPruningInfo, fn: Callable[[nn.Module], float], goal: float,
                 *, penalize: bool = False, progress: Any = None) -> None:
        super().__init__(info.analysis)
        self.model = model
        self.info = info
        self.fn = fn
        self.goal = goal
        self.penalize = penalize
        self.progress = progress
        self.rank = ranking_scores(info.scores)
        self.cache: dict[tuple, float] = {}
        self.plans: dict[tuple, Plan] = {}
        self.failed: set[tuple] = set()

    @staticmethod
    def key(plan: Plan) -> tuple:
        return tuple(sorted(plan.keep.items()))

    def base(self, metric: str) -> float:
        if metric != "latency":
            return super().base(metric)
        if self._base_latency is None:
            self._base_latency = float(self.fn(self.model))
        return self._base_latency

    def value(self, metric: str, plan: Plan) -> float:
        if metric != "latency":
            return super().value(metric, plan)
        if not plan.keep:
            return self.base(metric)
        key = self.key(plan)
        if key not in self.cache:
            try:
                pruned = apply_plan(self.model, self.analysis, plan, inplace=False, verify=False)
                self.cache[key] = float(self.fn(pruned))
            except LatencyMeasurementError as exc:
                log.warning("latency of a candidate could not be measured (%s); treating it as infeasible", exc)
                self.failed.add(key)
                self.cache[key] = self._penalty(plan) if self.penalize else math.inf
            self.plans[key] = plan
            if self.progress is not None:
                self.progress.update(1)
        return self.cache[key]

    def remeasure(self, plan: Plan) -> float:
        """The user's latency function is the measurement: no separate re-timing."""
        return self.value("latency", plan)

    def deployed(self, plans: list[Plan]) -> list[float] | None:
        """No timing as deployed: the user's function is the measurement (the base class would
        time onnxruntime exports on this machine and scale their ratios onto the user's metric,
        and the settle step would then move the answer off the user's goal)."""
        return None

    def state_swing(self, plan: Plan, above: bool = True) -> float:
        """The user's function has no machine states to swing between."""
        return 0.0

    def _penalty(self, plan: Plan) -> float:
        base = self.base("latency")
        predicted = self.cost.flops(plan.widths(self.analysis)) / max(self.cost.flops(), 1) * base
        return max(predicted, self.goal) * 1.05

    def kept_score(self, plan: Plan) -> float:
        widths = plan.widths(self.analysis)
        return sum(kept_value(self.rank[n], widths[n]) for n in self.rank)

    def best_measured(self) -> Plan | None:
        """Highest-scoring measured feasible candidate, else the fastest measured one."""
        ok = [(k, v) for k, v in self.cache.items() if k not in self.failed]
        feasible = [k for k, v in ok if v <= self.goal]
        if feasible:
            return self.plans[max(feasible, key=lambda k: self.kept_score(self.plans[k]))]
        if ok:
            return self.plans[min(ok, key=lambda kv: kv[1])[0]]
        return None

    def settle(self, plan: Plan) -> Plan:
        """The search's answer, unless its measurement failed: then the best measured one."""
        if self.key(plan) not in self.failed:
            return plan
        best = self.best_measured()
        if best is None:
            raise LatencyMeasurementError("no candidate's latency could be measured")
        return best


def _labels(plan: Plan, analysis: Analysis) -> list[Label]:
    return [Label(i) for i in plan.prune_labels(analysis)]


def _progress(total: int | None, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


class KnapsackPruningLabelSelector(PruningLabelSelector, TargetLatencyMixin):
    """Maximise the kept importance under ``target_latency`` with prunepass's iterated knapsack
    (exact MILP on FLOPs-linearised costs, the budget rescaled by the measured latency at every
    iteration).  Labels inside a group are always pruned in ascending score order, which also
    satisfies ``strict_label_order=False``."""

    def __init__(self, target_latency: float, latency_calculation_function: Callable[[nn.Module], float],
                 strict_label_order: bool = True, channels_constraint: ChannelsSelectorConstraint | None = None,
                 max_iterations: int = 15, solver_execution_time_limit: float | None = 60,
                 verbose: bool = True) -> None:
        TargetLatencyMixin.__init__(self, target_latency, latency_calculation_function)
        self.strict_label_order = strict_label_order
        self.channels_constraint = channels_constraint or DummyChannelsSelectorConstraint()
        self.max_iterations = max_iterations
        self.solver_execution_time_limit = solver_execution_time_limit
        self.verbose = verbose
        self.report: Any = None

    def select(self, model: nn.Module, pruning_info: ModelPruningInfo) -> list[Label]:
        info = _info(pruning_info)
        bar = _progress(self.max_iterations, self.verbose, "knapsack")
        evaluator = _UserLatencyEvaluator(model, info, self.latency_calculation_function, self.target_latency,
                                          penalize=True, progress=bar)
        limit = self.solver_execution_time_limit
        try:
            plan, self.report = knapsack_plan(
                info.analysis, info.scores, Target("latency", self.target_latency), evaluator,
                self.channels_constraint._as_channel_constraint(), strict=False, max_iterations=self.max_iterations,
                solver_time_limit=float(limit) if limit is not None else 1e9)
        finally:
            bar.close()
        plan = evaluator.settle(plan)
        _summary(self, evaluator, plan, info, self.verbose)
        return _labels(plan, info.analysis)


class OptimalPruningLabelSelector(PruningLabelSelector, TargetLatencyMixin):
    """Search for per-group pruning ratios maximising the kept importance under
    ``target_latency`` (prunepass's seeded evolutionary search; every candidate is pruned and
    measured with ``latency_calculation_function``).

    ``n_starting_points`` is the population size (default ``min(2 * groups, n_search_steps - 1)``,
    at least 3); ``n_search_steps=None`` searches until 50 steps bring no improvement; ``seed=None``
    means seed 0 (runs are reproducible); ``handle_ctrl_c`` returns the best candidate found so
    far on Ctrl+C.  ``batch_size``, ``device``, ``dtype`` and ``scbo_kwargs`` are SCBO settings
    and are ignored; ``additional_starting_points_generator`` is not supported."""

    def __init__(self, target_latency: float, latency_calculation_function: Callable[[nn.Module], float],
                 n_search_steps: int | None, n_starting_points: int | None = None, batch_size: int = 4,
                 channels_constraint: ChannelsSelectorConstraint | None = None,
                 additional_starting_points_generator: Any = None, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float64, verbose: bool = True, handle_ctrl_c: bool = False,
                 seed: int | None = None, scbo_kwargs: dict[str, Any] | None = None) -> None:
        TargetLatencyMixin.__init__(self, target_latency, latency_calculation_function)
        if n_search_steps is not None and n_search_steps < 1:
            raise ValueError(f"n_search_steps must be >= 1 or None, got {n_search_steps}")
        if additional_starting_points_generator is not None:
            warnings.warn("additional_starting_points_generator is not supported by prunepass's search; ignored",
                          stacklevel=2)
        self.n_search_steps = n_search_steps
        self.n_starting_points = n_starting_points
        self.batch_size = batch_size
        self.channels_constraint = channels_constraint or DefaultChannelsSelectorConstraint()
        self.additional_starting_points_generator = additional_starting_points_generator
        self.device = device
        self.dtype = dtype
        self.verbose = verbose
        self.handle_ctrl_c = handle_ctrl_c
        self.seed = seed
        self.scbo_kwargs = scbo_kwargs
        self.report: Any = None

    def select(self, model: nn.Module, pruning_info: ModelPruningInfo) -> list[Label]:
        info = _info(pruning_info)
        n_groups = len(info.prunable_groups)
        steps = self.n_search_steps if self.n_search_steps is not None else 10_000
        patience = None if self.n_search_steps is not None else 50
        start = self.n_starting_points
        if start is None:
            start = min(2 * n_groups, steps - 1)
        bar = _progress(self.n_search_steps, self.verbose, "optimal pruning search")
        evaluator = _UserLatencyEvaluator(model, info, self.latency_calculation_function, self.target_latency,
                                          progress=bar)
        try:
            plan, self.report = evolutionary_plan(
                info.analysis, info.scores, Target("latency", self.target_latency), evaluator,
                self.channels_constraint._as_channel_constraint(), n_search_steps=steps,
                population=max(3, start), seed=0 if self.seed is None else self.seed, patience=patience)
        except KeyboardInterrupt:
            if not self.handle_ctrl_c:
                raise
            best = evaluator.best_measured()
            if best is None:
                raise
            log.warning("search interrupted: returning the best candidate measured so far")
            plan = best
        finally:
            bar.close()
        plan = evaluator.settle(plan)
        _summary(self, evaluator, plan, info, self.verbose)
        return _labels(plan, info.analysis)


def _summary(selector: Any, evaluator: _UserLatencyEvaluator, plan: Plan, info: ModelPruningInfo,
             verbose: bool) -> None:
    achieved = evaluator.value("latency", plan)
    text = (f"{type(selector).__name__}: latency {evaluator.base('latency'):.6g} -> {achieved:.6g} "
            f"(target {selector.target_latency:.6g}{', met' if achieved <= selector.target_latency else ', NOT met'}); "
            f"{len(evaluator.cache)} candidates measured ({len(evaluator.failed)} failed); "
            f"{len(plan.prune_labels(info.analysis))} labels pruned")
    # verbose selectors report at WARNING so the summary shows with default logging settings
    log.log(logging.WARNING if verbose else logging.INFO, text)


# ====================================================================== high-level interface
def calibrate_and_prune_model(
    label_selector: PruningLabelSelector,
    model: nn.Module,
    dataloader: Iterable,
    loss_function: Callable[[Any, Any], torch.Tensor],
    finetune_bn: bool = False,
    calibration_steps: int | None = None,
    calibration_epochs: int = 1,
    sample_to_n_samples: Callable[[Any], int] = default_sample_to_n_samples,
    sample_to_model_inputs: Callable[[Any], Any] = default_sample_to_model_inputs,
    show_tqdm: bool = False,
    entry_point: str = "forward",
) -> nn.Module:
    """Calibrate, select labels with ``label_selector`` and prune.  Works on a copy: returns the
    pruned copy and leaves ``model`` untouched.  ``finetune_bn`` re-estimates BatchNorm running
    statistics of the pruned model on ``dataloader`` (``calibration_steps`` batches, or one pass)."""
    work = copy.deepcopy(model)
    info = calibrate_model_for_pruning(work, dataloader, loss_function, n_steps=calibration_steps,
                                       epochs=calibration_epochs, sample_to_n_samples=sample_to_n_samples,
                                       sample_to_model_inputs=sample_to_model_inputs, show_tqdm=show_tqdm,
                                       entry_point=entry_point)
    labels = label_selector.select(work, info)
    pruned = prune_model(work, info, labels, inplace=True)
    if finetune_bn:
        _finetune_bn(pruned, dataloader, steps=calibration_steps, sample_to_model_inputs=_adapt_inputs(
            sample_to_model_inputs), entry_point=entry_point, show_progress=show_tqdm)
    return pruned


def calibrate_and_prune_model_equal(
    model: nn.Module,
    dataloader: Iterable,
    loss_function: Callable[[Any, Any], torch.Tensor],
    pruning_ratio: float = 0.5,
    finetune_bn: bool = False,
    calibration_steps: int | None = None,
    calibration_epochs: int = 1,
    sample_to_n_samples: Callable[[Any], int] = default_sample_to_n_samples,
    sample_to_model_inputs: Callable[[Any], Any] = default_sample_to_model_inputs,
    show_tqdm: bool = False,
    entry_point: str = "forward",
) -> nn.Module:
    """Prune ``pruning_ratio`` of the channels of every prunable group (a pruned copy)."""
    return calibrate_and_prune_model(
        UniformPruningLabelSelector(pruning_ratio), model, dataloader, loss_function, finetune_bn=finetune_bn,
        calibration_steps=calibration_steps, calibration_epochs=calibration_epochs,
        sample_to_n_samples=sample_to_n_samples, sample_to_model_inputs=sample_to_model_inputs,
        show_tqdm=show_tqdm, entry_point=entry_point)


def calibrate_and_prune_model_optimal(
    model: nn.Module,
    dataloader: Iterable,
    loss_function: Callable[[Any, Any], torch.Tensor],
    latency_calculation_function: Callable[[nn.Module], float],
    target_latency: float,
    finetune_bn: bool = False,
    calibration_steps: int | None = None,
    calibration_epochs: int = 1,
    sample_to_n_samples: Callable[[Any], int] = default_sample_to_n_samples,
    sample_to_model_inputs: Callable[[Any], Any] = default_sample_to_model_inputs,
    show_tqdm: bool = False,
    channels_selection_constraint: ChannelsSelectorConstraint | None = None,
    n_search_steps: int = 200,
    entry_point: str = "forward",
    **kwargs: Any,
) -> nn.Module:
    """Search per-group pruning ratios under ``target_latency`` (units of
    ``latency_calculation_function``) and prune (a pruned copy).  ``kwargs`` go to
    :class:`OptimalPruningLabelSelector` (e.g. ``seed``, ``verbose``)."""
    selector = OptimalPruningLabelSelector(target_latency, latency_calculation_function, n_search_steps,
                                           channels_constraint=channels_selection_constraint, **kwargs)
    return calibrate_and_prune_model(
        selector, model, dataloader, loss_function, finetune_bn=finetune_bn, calibration_steps=calibration_steps,
        calibration_epochs=calibration_epochs, sample_to_n_samples=sample_to_n_samples,
        sample_to_model_inputs=sample_to_model_inputs, show_tqdm=show_tqdm, entry_point=entry_point)


# ====================================================================== inspection tools
def _model_or_captured(pruning_info: ModelPruningInfo | Analysis, model: nn.Module | None) -> nn.Module:
    return model if model is not None else _analysis(pruning_info).model


def tabulate_module_dependencies(module_name: str, pruning_info: ModelPruningInfo | Analysis,
                                 model: nn.Module | None = None, show_op_with_weights_only: bool = True,
                                 show_parameter_nodes: bool = False, show_all_nodes: bool = False) -> str:
    """Groups, nodes and labels around module ``module_name`` (``model`` defaults to the
    calibrated one)."""
    return _tabulate_module_dependencies(module_name, _analysis(pruning_info),
                                         _model_or_captured(pruning_info, model), show_op_with_weights_only,
                                         show_parameter_nodes, show_all_nodes)


def tabulate_unprunable_groups(pruning_info: ModelPruningInfo | Analysis, model: nn.Module | None = None,
                               show_op_with_weights_only: bool = True, show_parameter_nodes: bool = False,
                               show_all_nodes: bool = False) -> str:
    """Every unprunable group with its modules, users and reasons."""
    return _tabulate_unprunable_groups(_analysis(pruning_info), _model_or_captured(pruning_info, model),
                                       show_op_with_weights_only, show_parameter_nodes, show_all_nodes)


def tabulate_label_dependencies(label: Any, pruning_info: ModelPruningInfo | Analysis,
                                model: nn.Module | None = None, show_op_with_weights_only: bool = True,
                                show_parameter_nodes: bool = False, show_all_nodes: bool = False) -> str:
    """Parameters and modules one label touches."""
    return _tabulate_label_dependencies(_as_int(label), _analysis(pruning_info),
                                        _model_or_captured(pruning_info, model), show_op_with_weights_only,
                                        show_parameter_nodes, show_all_nodes)


def tabulate_label_filters(label: Any, pruning_info: ModelPruningInfo | Analysis, model: nn.Module) -> str:
    """Tensor name, filter shape and index mapping of every slice owned by ``label``."""
    return _tabulate_label_filters(_as_int(label), _analysis(pruning_info), model)


def get_label_filters(label: Any, pruning_info: ModelPruningInfo | Analysis, model: nn.Module, *,
                      with_tensors: bool = False) -> list[LabelFilterInfo]:
    """Slices of parameters and buffers owned by ``label`` (with their values: ``with_tensors``)."""
    return _get_label_filters(_as_int(label), _analysis(pruning_info), model, with_tensors=with_tensors)


def _graph_of(graph: Any) -> fx.Graph:
    if isinstance(graph, (ModelPruningInfo, Analysis)):
        return _analysis(graph).flow.graph
    if isinstance(graph, fx.GraphModule):
        return graph.graph
    if isinstance(graph, fx.Graph):
        return graph
    raise TypeError(f"expected a ModelPruningInfo, Analysis or fx graph, got {type(graph).__name__}")


def get_module_name_by_tracing_node(node: fx.Node) -> str:
    """Name of the innermost module that produced ``node`` (from ``torch.export`` metadata)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        raise ValueError(f"node {node.name} carries no module information")
    name = list(stack.values())[-1][0]
    if name.startswith(WRAPPER_PREFIX):  # non-forward entry points are captured through a wrapper
        name = name[len(WRAPPER_PREFIX):]
    elif name == "root":
        name = ""
    return name


def get_tracing_node_by_module_name(name: str, graph: Any) -> fx.Node:
    """First call node of the captured graph that module ``name`` produced and that reads one of
    its parameters (``graph``: a ModelPruningInfo, an Analysis or an exported fx graph)."""
    g = _graph_of(graph)
    fallback = None
    for node in g.nodes:
        if node.op != "call_function":
            continue
        try:
            owner = get_module_name_by_tracing_node(node)
        except ValueError:
            continue
        if owner != name:
            continue
        if any(isinstance(a, fx.Node) and a.op == "placeholder" and a.name.startswith(("p_", "b_"))
               for a in node.args):
            return node
        fallback = fallback or node
    if fallback is not None:
        return fallback
    raise ValueError(f"no node of the captured graph belongs to module {name!r}")
