"""The only module that imports onnx / onnx_graphsurgeon / onnxruntime: export, clean-up,
verification and latency measurement."""

from __future__ import annotations

import io
import logging
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


def _session(proto_or_path: Any, threads: int = 1, provider: str = "CPUExecutionProvider"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    data = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    return ort.InferenceSession(data, so, providers=[provider])


def _feeds(sess: Any, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
    flat = [a for a in torch.utils._pytree.tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(flat):
        raise OnnxExportError(f"ONNX model has {len(names)} inputs but {len(flat)} tensors were given")
    return {n: t.detach().cpu().numpy() for n, t in zip(names, flat, strict=True)}


def run_onnx(proto_or_path: Any, args: tuple, kwargs: dict | None = None) -> list[np.ndarray]:
    sess = _session(proto_or_path)
    return sess.run(None, _feeds(sess, args, kwargs or {}))


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
        sess = session if session is not None else _session(model, threads, provider)
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
    times.sort()
    q = statistics.quantiles(times, n=10, method="inclusive")
    med = statistics.median(times)
    return LatencyStats(p10=q[0], median=med, p90=q[-1], mean=statistics.fmean(times),
                        spread=(q[-1] - q[0]) / med if med else 0.0, runs=len(times), warmup=warmup,
                        threads=threads, provider=provider)


def model_bytes(proto: Any) -> bytes:
    buf = io.BytesIO()
    buf.write(proto.SerializeToString())
    return buf.getvalue()
