"""The only module that imports onnx / onnx_graphsurgeon / onnxruntime: export, clean-up,
verification and latency measurement."""

from __future__ import annotations

import io
import logging
import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunepass.errors import LatencyMeasurementError, PrunepassError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


class OnnxExportError(PrunepassError):
    """torch.onnx could not export the model, or the ONNX model does not match torch."""


def export_onnx(model: nn.Module | torch.export.ExportedProgram, args: tuple, kwargs: dict | None = None,
                path: str | Path | None = None, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                clean: bool = True, verify: bool = True, atol: float = 1e-4, rtol: float = 1e-3) -> Any:
    """Export to ONNX (torch.export-based exporter), clean with onnx-graphsurgeon and check the
    result against torch in onnxruntime.  Returns the ``onnx.ModelProto`` (also written to
    ``path`` when given)."""
    import onnx

    kwargs = kwargs or {}
    dynamic_shapes = None
    if dynamic_batch:
        if isinstance(model, torch.export.ExportedProgram):
            model = model.module()
        batch = torch.export.Dim("batch", min=1, max=4096)
        flat_args = [({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None) for a in args]
        dynamic_shapes = (tuple(flat_args), {k: ({0: batch} if isinstance(v, torch.Tensor) else None)
                                             for k, v in kwargs.items()}) if kwargs else tuple(flat_args)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                     dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    except Exception as exc:  # noqa: BLE001
        raise OnnxExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc)[:500]}") from exc
    proto = prog.model_proto
    log.debug("onnx export %.2fs", time.perf_counter() - t0)
    if clean:
        proto = clean_onnx(proto)
    onnx.checker.check_model(proto)
    if verify:
        verify_onnx(proto, model, args, kwargs, atol=atol, rtol=rtol)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    return proto


def clean_onnx(proto: Any) -> Any:
    """onnx-graphsurgeon clean-up: constant folding (errors surfaced), dead nodes, toposort."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(proto)
    try:
        graph.fold_constants(error_ok=False)
    except Exception as exc:  # noqa: BLE001
        raise OnnxExportError(f"constant folding failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.ir_version = proto.ir_version
    del out.opset_import[:]
    out.opset_import.extend(proto.opset_import)
    return out


def make_session(proto_or_path: Any, threads: int = 1, provider: str = "CPUExecutionProvider") -> Any:
    """An onnxruntime session set up for stable timing: fixed intra-op threads, one inter-op
    thread, sequential execution, all graph optimisations."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # kernel errors become exceptions, not stderr noise
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    data = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    return ort.InferenceSession(data, so, providers=[provider])


def example_feeds(sess: Any, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
    flat = [a for a in torch.utils._pytree.tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(flat):
        raise OnnxExportError(f"ONNX model has {len(names)} inputs but {len(flat)} tensors were given")
    return {n: t.detach().cpu().numpy() for n, t in zip(names, flat, strict=True)}


def run_onnx(proto_or_path: Any, args: tuple, kwargs: dict | None = None) -> list[np.ndarray]:
    sess = make_session(proto_or_path)
    return sess.run(None, example_feeds(sess, args, kwargs or {}))


def verify_onnx(proto: Any, model: Any, args: tuple, kwargs: dict, atol: float = 1e-4, rtol: float = 1e-3) -> float:
    """onnxruntime output must match torch; returns the largest absolute difference."""
    with torch.no_grad():
        ref = (model.module() if isinstance(model, torch.export.ExportedProgram) else model)(*args, **kwargs)
    ref_flat = [t for t in torch.utils._pytree.tree_flatten(ref)[0] if isinstance(t, torch.Tensor)]
    got = run_onnx(proto, args, kwargs)
    worst = 0.0
    for r, g in zip(ref_flat, got, strict=True):
        r = r.detach().cpu().numpy()
        if r.shape != g.shape:
            raise OnnxExportError(f"ONNX output shape {g.shape} != torch {r.shape}")
        if not np.allclose(g, r, atol=atol, rtol=rtol):
            raise OnnxExportError(f"ONNX output differs from torch by up to {np.abs(g - r).max():.3g}")
        worst = max(worst, float(np.abs(g - r).max()) if r.size else 0.0)
    return worst


# ---------------------------------------------------------------------- latency
@dataclass(frozen=True)
class LatencyStats:
    """Latency in milliseconds over ``runs`` timed runs (after ``warmup`` untimed runs)."""

    p10: float
    median: float
    p90: float
    mean: float
    spread: float  # (p90 - p10) / median
    runs: int
    warmup: int
    threads: int
    provider: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"p10 {self.p10:.3f} ms | median {self.median:.3f} ms | p90 {self.p90:.3f} ms | "
                f"spread {100 * self.spread:.1f}% ({self.runs} runs, {self.threads} thread(s), {self.provider})")


def random_feeds(sess: Any, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs matching the model's declared types and shapes (symbolic dims -> ``batch``)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        if "int" in i.type:
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(np.int64 if "int64" in i.type else np.int32)
        elif "bool" in i.type:
            feeds[i.name] = np.ones(shape, dtype=bool)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def measure_latency(model: Any, feeds: dict[str, np.ndarray] | None = None, *, threads: int = 1,
                    warmup: int = 10, runs: int = 50, provider: str = "CPUExecutionProvider",
                    min_seconds: float = 0.0, session: Any = None) -> LatencyStats:
    """Robust onnxruntime latency of an ONNX model (path, bytes or ModelProto).

    Method: one session with fixed intra-op threads and sequential execution; ``warmup`` untimed
    runs; then ``runs`` timed runs (more if ``min_seconds`` is not reached); report p10 (the
    best estimate of the undisturbed cost on a shared machine), the median and p90."""
    if runs < 3:
        raise LatencyMeasurementError("runs must be >= 3 to report percentiles")
    try:
        sess = session if session is not None else make_session(model, threads, provider)
        feeds = feeds if feeds is not None else random_feeds(sess)
        for _ in range(warmup):
            sess.run(None, feeds)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < runs or time.perf_counter() - start < min_seconds:
            t = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t) * 1000.0)
    except LatencyMeasurementError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise LatencyMeasurementError(f"onnxruntime could not run the model: {type(exc).__name__}: {exc}") from exc
    return _stats(times, warmup, threads, provider)


def _stats(times: list[float], warmup: int, threads: int, provider: str) -> LatencyStats:
    times = sorted(times)
    q = statistics.quantiles(times, n=10, method="inclusive")
    med = statistics.median(times)
    return LatencyStats(p10=q[0], median=med, p90=q[-1], mean=statistics.fmean(times),
                        spread=(q[-1] - q[0]) / med if med else 0.0, runs=len(times), warmup=warmup,
                        threads=threads, provider=provider)


def paired_latency(sessions: list[tuple[Any, dict[str, np.ndarray]]], *, runs: int = 50, warmup: int = 10,
                   threads: int = 1, provider: str = "CPUExecutionProvider") -> list[LatencyStats]:
    """Latency of several (session, feeds) pairs timed run by run in turn (a, b, a, b, ...).

    On a shared machine the load changes within seconds; timed in blocks, one model can get a
    quiet second and the other a busy one.  Alternating single runs gives every model the same
    share of the load, so the *ratio* of their statistics is what this measures well."""
    if runs < 3:
        raise LatencyMeasurementError("runs must be >= 3 to report percentiles")
    times: list[list[float]] = [[] for _ in sessions]
    try:
        for sess, feeds in sessions:
            for _ in range(warmup):
                sess.run(None, feeds)
        for r in range(runs):
            order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
            for i in order:
                sess, feeds = sessions[i]
                t = time.perf_counter()
                sess.run(None, feeds)
                times[i].append((time.perf_counter() - t) * 1000.0)
    except Exception as exc:  # noqa: BLE001
        raise LatencyMeasurementError(f"onnxruntime could not run the model: {type(exc).__name__}: {exc}") from exc
    return [_stats(t, warmup, threads, provider) for t in times]


def paired_rounds(sessions: list[tuple[Any, dict[str, np.ndarray]]], *, rounds: int = 5, runs: int = 100,
                  min_seconds: float = 0.0, max_runs: int = 2000, warmup: int = 10, threads: int = 1,
                  provider: str = "CPUExecutionProvider") -> list[list[LatencyStats]]:
    """``rounds`` rounds of :func:`paired_latency`, each at least ``runs`` runs and long enough to
    last about ``min_seconds`` (estimated from one timed pass over the sessions; at most
    ``max_runs``): a model of a few tenths of a millisecond needs thousands of runs before its
    median stops moving with the machine's load.  Returns one list of stats per round."""
    try:
        for sess, feeds in sessions:  # first run: allocation, not timed
            sess.run(None, feeds)
        t = time.perf_counter()
        for sess, feeds in sessions:
            sess.run(None, feeds)
        per_pass = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001
        raise LatencyMeasurementError(f"onnxruntime could not run the model: {type(exc).__name__}: {exc}") from exc
    n = max(runs, min(max_runs, math.ceil(min_seconds / max(per_pass, 1e-6))))
    return [paired_latency(sessions, runs=n, warmup=warmup if r == 0 else 2, threads=threads, provider=provider)
            for r in range(rounds)]


def model_bytes(proto: Any) -> bytes:
    buf = io.BytesIO()
    buf.write(proto.SerializeToString())
    return buf.getvalue()


# ---------------------------------------------------------------------- fast candidate path
class OnnxTemplate:
    """Time pruning candidates without re-exporting from torch.

    The original program is exported once (unoptimised, so initializers keep their FQN names
    and every ONNX node records the FX node it came from).  A candidate is made by slicing the
    initializers with the plan's index maps and recomputing the shape constants of the ONNX
    nodes that come from view / reshape / expand / split / slice nodes, and the ``group`` of
    depthwise convolutions, from the same expressions the program rewrite uses.  Sizes derived
    at run time (Shape ops) adapt by themselves; onnxruntime folds them when it loads the model.
    Each candidate is checked once against the pruned program in torch (``check=True``)."""

    def __init__(self, analysis: Any, opset: int = DEFAULT_OPSET) -> None:
        import onnx

        self.analysis = analysis
        t0 = time.perf_counter()
        # decompose the way the ONNX exporter will, so its node names are the FX names we analyse
        self.flow = _onnx_friendly_flow(analysis)
        self._sym_map = _symbol_map(analysis, self.flow)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(self.flow.captured.program, analysis.captured.args,
                                     kwargs=analysis.captured.kwargs or None, dynamo=True, optimize=False,
                                     opset_version=opset, verbose=False)
        self.proto = prog.model_proto
        import onnx.shape_inference

        self.proto = onnx.shape_inference.infer_shapes(self.proto)  # element types for _fold_castlike
        _fold_castlike(self.proto)
        self.export_seconds = time.perf_counter() - t0
        self._arrays = {i.name: onnx.numpy_helper.to_array(i) for i in self.proto.graph.initializer}
        self._producers = {o: n.op_type for n in self.proto.graph.node for o in n.output}
        self._fx = {n.name: n for n in self.flow.graph.nodes}
        self._unmapped = [n.name for n in self.proto.graph.node
                          if n.op_type in _SHAPE_OPS and self._origin_name(n) not in self._fx]
        self._reference: tuple | None = None  # ((threads, provider), session, feeds) of the unpruned model

    def _origin_name(self, node: Any) -> str | None:
        for p in node.metadata_props:
            if p.key == "pkg.torch.onnx.fx_node":
                return p.value.split(":", 1)[0].strip().lstrip("%")
        return None

    def _origin(self, node: Any) -> Any:
        for p in node.metadata_props:
            if p.key == "pkg.torch.onnx.fx_node":
                name = p.value.split(":", 1)[0].strip().lstrip("%")
                return self._fx.get(name)
        return None

    def candidate(self, plan: Any) -> Any:
        """An ONNX model of the pruned network (weights sliced, shapes recomputed)."""
        import onnx
        from onnx import numpy_helper

        from prunepass.program import Resizer, _rewrite_node

        a = self.analysis
        keep = {n: list(k) for n, k in plan.keep.items()}
        sym_keep = a.keep_map(keep)
        if self._unmapped and sym_keep:
            raise OnnxExportError(f"fast path cannot trace {len(self._unmapped)} shape node(s) of the ONNX "
                                  f"template back to the program ({self._unmapped[:3]}); use the full export")
        missing = [s for s in sym_keep if s not in self._sym_map]
        if missing:
            raise OnnxExportError(f"fast path cannot map {len(missing)} group(s) onto the ONNX program; "
                                  "use the full export for this plan")
        rs = Resizer(self.flow, {self._sym_map[s]: idx for s, idx in sym_keep.items()})
        model = onnx.ModelProto()
        model.CopyFrom(self.proto)
        g = model.graph
        del g.value_info[:]  # recorded intermediate shapes are the unpruned ones
        touched: dict[str, dict[int, list[int]]] = {}
        for name in plan.keep:
            for m in a.group(name).members:
                touched.setdefault(m.fqn, {})[m.axis] = a.kept_indices(m.fqn, m.axis, keep)
        for init in g.initializer:
            axes = touched.get(init.name)
            if axes:
                arr = self._arrays[init.name]
                for axis, idx in axes.items():
                    arr = np.take(arr, idx, axis=axis)
                init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), init.name))
        scratch = fx_graph_node_args(self._fx, rs, _rewrite_node)
        new_inits = []
        for node in g.node:
            origin = self._origin(node)
            if origin is None or origin.name not in scratch:
                continue
            for index, value in _shape_patches(node, scratch[origin.name]):
                if index == "group":
                    for attr in node.attribute:
                        if attr.name == "group":
                            attr.i = int(value)
                    continue
                cname = f"prunepass_shape_{len(new_inits)}"
                new_inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), cname))
                node.input[index] = cname
        self._materialise_conv_biases(g, new_inits)
        g.initializer.extend(new_inits)
        return model

    def _materialise_conv_biases(self, g: Any, new_inits: list) -> None:
        """The exporter builds a missing conv bias at run time (zeros expanded to Shape(weight)),
        which keeps onnxruntime from fusing BatchNorm into the conv: make it an initializer."""
        from onnx import numpy_helper

        inits = {i.name: i for i in g.initializer}
        for node in g.node:
            if node.op_type != "Conv" or len(node.input) < 3 or node.input[2] in inits or node.input[1] not in inits:
                continue
            if self._producers.get(node.input[2]) is None:
                continue
            w = inits[node.input[1]]
            name = f"prunepass_bias_{len(new_inits)}"
            new_inits.append(numpy_helper.from_array(np.zeros(w.dims[0], dtype=np.float32), name))
            node.input[2] = name

    def session(self, plan: Any, check: bool = True, threads: int = 1,
                provider: str = "CPUExecutionProvider") -> tuple[Any, dict[str, np.ndarray]]:
        """An onnxruntime session of the candidate and its feeds (the example inputs); with
        ``check`` its outputs are compared with the pruned program's first.  The unpruned
        model's session (empty plan, no check) is built once and kept: every candidate is timed
        against it."""
        reference = not plan.keep and not check
        if reference and self._reference is not None and self._reference[0] == (threads, provider):
            return self._reference[1], self._reference[2]
        sess = make_session(self.candidate(plan), threads, provider)
        feeds = example_feeds(sess, self.analysis.captured.args, self.analysis.captured.kwargs)
        if check:
            self.check(plan, sess, feeds)
        if reference:
            self._reference = ((threads, provider), sess, feeds)
        return sess, feeds

    def measure(self, plan: Any, check: bool = True, **latency_kwargs: Any) -> LatencyStats:
        """Latency of the candidate (see :func:`measure_latency` for the keyword arguments)."""
        sess, feeds = self.session(plan, check, latency_kwargs.get("threads", 1),
                                   latency_kwargs.get("provider", "CPUExecutionProvider"))
        return measure_latency(None, feeds, session=sess, **latency_kwargs)

    def check(self, plan: Any, sess: Any, feeds: dict[str, np.ndarray]) -> None:
        from prunepass.rewrite import prune_program

        program = prune_program(self.analysis, plan, export=False)
        with torch.no_grad():
            ref = program(*self.analysis.captured.args, **self.analysis.captured.kwargs)
        ref_flat = [t.numpy() for t in torch.utils._pytree.tree_flatten(ref)[0] if isinstance(t, torch.Tensor)]
        try:
            got = sess.run(None, feeds)
        except Exception as exc:  # noqa: BLE001
            raise OnnxExportError(f"fast-path candidate does not run in onnxruntime: {exc}") from exc
        for r, o in zip(ref_flat, got, strict=True):
            if r.shape != o.shape or not np.allclose(r, o, atol=1e-3, rtol=1e-3):
                raise OnnxExportError("fast-path candidate differs from the pruned program; "
                                      "use the full export for this model")


def fx_graph_node_args(fx_nodes: dict[str, Any], rs: Any, rewrite: Any) -> dict[str, tuple]:
    """New arguments of every FX node the plan changes (computed on throwaway copies)."""
    from torch import fx as _fx

    out: dict[str, tuple] = {}
    scratch = _fx.Graph()
    for name, node in fx_nodes.items():
        if node.op != "call_function":
            continue
        ph = scratch.placeholder(f"x_{name}")
        copy_node = scratch.call_function(node.target, (ph, *node.args[1:]), dict(node.kwargs))
        before = (copy_node.target, tuple(copy_node.args[1:]))
        rewrite(node, copy_node, rs)
        after = (copy_node.target, tuple(copy_node.args[1:]))
        if after != before:
            out[name] = (copy_node.target, tuple(copy_node.args))
    return out


def _shape_patches(node: Any, new: tuple) -> list[tuple[Any, Any]]:
    """[(input index or "group", new value)] for an ONNX node whose FX origin was rewritten."""
    target, args = new
    op = str(target)
    n_in = len(node.input)
    if node.op_type in ("Reshape", "Expand") and n_in > 1 and op.startswith(
            ("aten.view", "aten.reshape", "aten._unsafe_view", "aten.expand")):
        return [(1, list(args[1]))]
    if node.op_type in ("Split", "SplitToSequence") and op.startswith("aten.split_with_sizes") and n_in > 1:
        return [(1, list(args[1]))]
    if node.op_type == "Slice" and op.startswith("aten.slice") and n_in > 2:
        return [(1, [int(args[2])]), (2, [int(args[3])])]
    if node.op_type == "Conv" and op.startswith(("aten.conv", "aten.convolution")):
        return [("group", int(args[-1]))]
    return []


def _onnx_friendly_flow(analysis: Any) -> Any:
    """Dataflow over the program decomposed with the ONNX exporter's own table."""
    from torch.onnx._internal.exporter import _fx_passes, _registration

    from prunepass.capture import Captured, GraphInput
    from prunepass.propagate import propagate
    from prunepass.rules import default_registry

    ep = _fx_passes.decompose_with_registry(analysis.program, _registration.ONNXRegistry.from_torchlib())
    cap = analysis.captured
    inputs = {}
    for spec in ep.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        old = next((gi for gi in cap.inputs.values() if spec.target is not None and gi.target == spec.target), None)
        if name is not None:
            inputs[name] = GraphInput(name, old.kind if old else "input", old.target if old else name)
    by_target: dict[str, str] = {}
    for name, gi in inputs.items():
        if gi.kind in ("parameter", "buffer"):
            by_target.setdefault(gi.target, name)
    aliases = {}
    for alias, canon in cap.aliases.items():
        ta, tc = cap.inputs[alias].target, cap.inputs[canon].target
        if ta in by_target and tc in by_target:
            aliases[by_target[ta]] = by_target[tc]
    captured = Captured(ep, cap.model, cap.entry_point, cap.args, cap.kwargs, inputs, 0.0, aliases=aliases)
    return propagate(captured, default_registry(), analysis.flow.options)


def _symbol_map(analysis: Any, flow: Any) -> dict:
    """Symbol of the original analysis -> symbol of ``flow``, matched through parameter axes."""
    from prunepass.dims import Dim, Sym

    out: dict = {}

    def walk(x: Any, y: Any) -> None:
        if isinstance(x, Sym) and isinstance(y, Sym):
            out.setdefault(x, y)
        elif isinstance(x, Dim) and isinstance(y, Dim) and len(x.segs) == len(y.segs):
            for sx, sy in zip(x.segs, y.segs, strict=True):
                if len(sx) == len(sy):
                    for fx_, fy in zip(sx, sy, strict=True):
                        walk(fx_, fy)

    for node in flow.graph.nodes:
        gi = flow.captured.inputs.get(node.name) if node.op == "placeholder" else None
        if gi is None or gi.kind not in ("parameter", "buffer") or not node.users:
            continue
        for axis, d in enumerate(flow.env.get(node) or []):
            mine = analysis.axis_expr(gi.target, axis)
            if mine is not None:
                walk(mine, flow.solver.norm(d))
    return out


_SHAPE_OPS = {"Reshape", "Expand", "Split", "SplitToSequence", "Slice", "Tile", "ConstantOfShape"}


def _fold_castlike(proto: Any) -> None:
    """Replace ``CastLike(constant, x)`` by a constant of x's type (float32 here).  The exporter
    emits them for scalars (clip bounds, zero biases); because they depend on a graph input,
    onnxruntime cannot fold them and then misses Conv+BatchNorm / Conv+Clip fusions."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for attr in n.attribute:
                value = helper.get_attribute_value(attr)
                consts[n.output[0]] = numpy_helper.to_array(value) if attr.name == "value" else np.asarray(value)
    float_inputs = {i.name for i in g.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    keep = []
    for n in g.node:
        if n.op_type == "CastLike" and n.input[0] in consts and (n.input[1] in float_inputs or _is_float(n.input[1], g)):
            value = consts[n.input[0]].astype(np.float32)
            g.initializer.append(numpy_helper.from_array(value, n.output[0]))
            consts[n.output[0]] = value
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)


def _is_float(name: str, g: Any) -> bool:
    """Whether a tensor is float32 according to the template's recorded value_info."""
    from onnx import TensorProto

    for vi in list(g.value_info) + list(g.output):
        if vi.name == name:
            return vi.type.tensor_type.elem_type == TensorProto.FLOAT
    return False
