"""What earlier latency-targeted runs learned about this machine's states, kept between runs.

On a shared VM a small model's latency *ratio* (pruned / original) depends on the machine's
state: the digits CNN at batch 64 measures 0.40 of the original when the machine is quiet and
0.44 when it is busy (the original at 0.9 ms against 1.2 ms), and the machine switches between
the two for seconds to minutes at a time.  A search aims its answer midway between the states it
saw (``LatencyOracle.deployed_estimate``), so either state lands within the band; but a search
that ran through one state only cannot know how far the other one moves the ratio.  Earlier runs
of the same model on the same machine can: this module remembers, per (machine, model, input
shapes, threads), the original's latency in the quietest round of each run and the busy / quiet
ratio gap of the runs that saw both states, and hands their medians to the next search as a
prior (:class:`StatePrior`).  It works like a timing cache: one JSON file, small, safe to delete.

The file is ``$PRUNEPASS_CACHE_DIR/machine_states.json`` (default ``~/.cache/prunepass``, or
``$XDG_CACHE_HOME/prunepass``).  ``PRUNEPASS_STATE_MEMORY=0`` turns the memory off: every search
then starts from what it sees itself, as before."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "machine_states.json"
STATE_VERSION = 1
KEEP_RUNS = 12  # per key, the last this many runs are remembered
KEEP_KEYS = 200  # keys beyond this many are dropped, least recently updated first
GAP_LIMITS = (0.8, 1.25)  # a recorded gap outside these is taken for a misreading and not kept


@dataclass(frozen=True)
class StatePrior:
    """The medians over the remembered runs: the original's latency (ms, full export) in the
    quietest round of each run, and the busy / quiet ratio gap of those that saw both states
    (None when none did).  ``runs`` and ``gap_runs`` say how many runs each median is over."""

    quiet_ms: float | None
    gap: float | None
    runs: int
    gap_runs: int

    def to_dict(self) -> dict[str, Any]:
        return {"quiet_ms": self.quiet_ms, "gap": self.gap, "runs": self.runs, "gap_runs": self.gap_runs}


def cache_dir() -> Path | None:
    """Where the memory lives; None when ``PRUNEPASS_STATE_MEMORY`` turns it off."""
    if os.environ.get("PRUNEPASS_STATE_MEMORY", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    if os.environ.get("PRUNEPASS_CACHE_DIR"):
        return Path(os.environ["PRUNEPASS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunepass"


def machine_signature() -> str:
    """The machine as timings see it: host name, CPU model and count, onnxruntime version."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        ort = "?"
    return f"{platform.node()}|{cpu}|{os.cpu_count()}|ort {ort}"


def state_key(analysis: Any, threads: int) -> str:
    """The memory's key of one model as timed: architecture (``plan.fingerprint``), the shapes
    and dtypes of its example inputs, the intra-op threads and the machine."""
    import torch

    from prunepass.plan import fingerprint

    flat = torch.utils._pytree.tree_flatten((analysis.captured.args, analysis.captured.kwargs))[0]
    shapes = [f"{tuple(t.shape)}:{t.dtype}" for t in flat if isinstance(t, torch.Tensor)]
    text = f"{fingerprint(analysis)}|{shapes}|threads={threads}|{machine_signature()}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class StateMemory:
    """The remembered states of one key (see the module's docstring).  Reading or writing the
    file never fails a run: a missing, unreadable or corrupt file reads as empty, and a write
    that fails is logged and skipped."""

    def __init__(self, key: str, directory: Path | None) -> None:
        self.key = key
        self.path = directory / STATE_FILE if directory is not None else None

    @classmethod
    def for_analysis(cls, analysis: Any, threads: int) -> StateMemory | None:
        """The memory of ``analysis``'s model timed with ``threads``; None when it is off."""
        directory = cache_dir()
        return cls(state_key(analysis, threads), directory) if directory is not None else None

    def _load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable machine-state memory %s (%s)", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("entries"), dict):
            return {}
        return data["entries"]

    def prior(self) -> StatePrior | None:
        """The medians of the remembered runs of this key; None before any run was remembered."""
        entry = self._load().get(self.key)
        try:
            quiet = [float(x) for x in entry.get("quiet_ms", []) if float(x) > 0] if isinstance(entry, dict) else []
            gaps = [float(x) for x in entry.get("gaps", []) if GAP_LIMITS[0] <= float(x) <= GAP_LIMITS[1]] if quiet else []
        except (TypeError, ValueError):
            return None
        if not quiet:
            return None
        return StatePrior(statistics.median(quiet), statistics.median(gaps) if gaps else None, len(quiet), len(gaps))

    def remember(self, quiet_ms: float, gap: float | None) -> None:
        """Add one run: the original's latency in its quietest round and, when it saw both states,
        its busy / quiet gap."""
        if self.path is None or not quiet_ms > 0:
            return
        entries = self._load()
        entry = entries.get(self.key) if isinstance(entries.get(self.key), dict) else {}
        quiet = [*entry.get("quiet_ms", []), round(float(quiet_ms), 5)][-KEEP_RUNS:]
        gaps = list(entry.get("gaps", []))
        if gap is not None and GAP_LIMITS[0] <= gap <= GAP_LIMITS[1]:
            gaps = [*gaps, round(float(gap), 5)][-KEEP_RUNS:]
        entries[self.key] = {"quiet_ms": quiet, "gaps": gaps, "updated": time.time()}
        if len(entries) > KEEP_KEYS:
            ordered = sorted(entries, key=lambda k: entries[k].get("updated", 0) if isinstance(entries[k], dict) else 0)
            for k in ordered[: len(entries) - KEEP_KEYS]:
                del entries[k]
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".states-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": STATE_VERSION, "entries": entries}, f)
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        except OSError as exc:
            log.warning("could not write the machine-state memory %s (%s)", self.path, exc)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
