"""What earlier latency-targeted runs learned about this machine's states, kept between runs.

On a shared VM a small model's latency *ratio* (pruned / original) depends on the machine's
state: the digits CNN at batch 64 measures 0.40 of the original when the machine is quiet and
0.44 when it is busy (the original at 0.9 ms against 1.2 ms), and the machine switches between
states for seconds to minutes at a time.  The ratio rises about in proportion to the machine's
*load* (the original's latency over its quiet latency): the zoo's convnext at 60 % measured
0.58 at load 1.0, 0.62 at 1.4 and 0.66 at 2.4, mobilenet_v2 0.58 at 1.0 and 0.63 at 1.75.  A
search aims its answer between the quiet state and the heaviest load it expects, three quarters
of the way up, where later measurements most often land (``LatencyOracle.deployed_estimate``,
``STATE_AIM``), so that states in between land within the band; but a
search that ran through one state only cannot know how steeply the ratio rises, nor how heavy
the machine gets.  Earlier runs can: this module remembers, per (machine, model, input shapes,
threads), the original's latency in the quietest round of each run, the ratio's *slope* (its
relative rise per unit of load) of the runs that saw two states, and each run's heavy load, and
hands their medians to the next search as a prior (:class:`StatePrior`).  The first run of a
model here has no slope of its own; it starts from the median slope of the other models
remembered on this machine with the same threads, which its own runs then replace.  The heavy
load is the machine's: the median over every model's runs here.  It works like a timing cache:
one JSON file, small, safe to delete.

The file is ``$PRUNEPASS_CACHE_DIR/machine_states.json`` (default ``~/.cache/prunepass``, or
``$XDG_CACHE_HOME/prunepass``).  ``PRUNEPASS_STATE_MEMORY=0`` (or ``prune(state_memory=False)``)
turns the memory off: every search then starts from what it sees itself."""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
STATE_VERSION = 3  # 2: one record per run; 3: a slope per unit of load and the heavy load, not a gap
KEEP_RUNS = 12  # per key, the last this many runs are remembered
KEEP_KEYS = 200  # keys beyond this many are dropped, least recently updated first
MAX_AGE_DAYS = 30  # runs older than this are forgotten (machines and their neighbours change)
SLOPE_LIMITS = (-0.1, 0.3)  # a recorded slope outside these is taken for a misreading and not kept
HEAVY_LIMITS = (1.0, 4.0)  # ... and a heavy load outside these


@dataclass(frozen=True)
class StatePrior:
    """The medians over the remembered runs: the original's latency (ms, full export) in the
    quietest round of each run (None before the first), and the slope of the ratio (its relative
    rise per unit of load) of those that saw two states.  ``runs`` and ``slope_runs`` say how
    many runs each median is over.  When none of this model's runs saw two states, ``slope`` is
    the median over ``slope_models`` other models remembered on this machine (their own medians),
    or None without any.  ``heavy`` is the median heavy load (``LatencyOracle.heavy_load``) of
    the runs of every model remembered on this machine, None without any."""

    quiet_ms: float | None
    slope: float | None
    runs: int
    slope_runs: int
    slope_models: int = 0
    heavy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"quiet_ms": self.quiet_ms, "slope": self.slope, "heavy": self.heavy, "runs": self.runs,
                "slope_runs": self.slope_runs, "slope_models": self.slope_models}


def cache_dir() -> Path | None:
    """Where the memory lives; None when ``PRUNEPASS_STATE_MEMORY`` turns it off."""
    if os.environ.get("PRUNEPASS_STATE_MEMORY", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    if os.environ.get("PRUNEPASS_CACHE_DIR"):
        return Path(os.environ["PRUNEPASS_CACHE_DIR"])
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home directory (a container run as a user without one)
        return None
    return Path(base) / "prunepass"


def machine_signature() -> str:
    """The machine as timings see it: CPU model and count, onnxruntime version.  Not the host
    name: containers and CI runners get a new one each run on the same hardware."""
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
    return f"{cpu}|{os.cpu_count()}|ort {ort}"


def machine_tag(threads: int) -> str:
    """What runs of different models share: the machine and the intra-op threads."""
    return hashlib.sha256(f"{machine_signature()}|threads={threads}".encode()).hexdigest()[:12]


def state_key(analysis: Any, threads: int) -> str:
    """The memory's key of one model as timed: architecture (``plan.fingerprint``), the shapes
    and dtypes of its example inputs, the intra-op threads, the machine and the torch and
    prunepass versions (a new exporter can change the original's ONNX and its speed)."""
    import torch

    from prunepass import __version__
    from prunepass.plan import fingerprint

    flat = torch.utils._pytree.tree_flatten((analysis.captured.args, analysis.captured.kwargs))[0]
    shapes = [f"{tuple(t.shape)}:{t.dtype}" for t in flat if isinstance(t, torch.Tensor)]
    text = (f"{fingerprint(analysis)}|{shapes}|threads={threads}|{machine_signature()}|torch {torch.__version__}"
            f"|prunepass {__version__}")
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class StateMemory:
    """The remembered runs of one key (see the module's docstring).  Reading or writing the file
    never fails a run: a missing, unreadable or corrupt file reads as empty, a record that is not
    what this module writes is skipped, and a write that fails is logged and skipped.  Two runs
    that write at the same moment can lose one of their records (the file itself is replaced
    whole, never left half written)."""

    def __init__(self, key: str, directory: Path | None, machine: str | None = None) -> None:
        self.key = key
        self.machine = machine  # ``machine_tag``: the other models whose slopes and heavy loads a run may use
        self.path = directory / STATE_FILE if directory is not None else None

    @classmethod
    def for_analysis(cls, analysis: Any, threads: int) -> StateMemory | None:
        """The memory of ``analysis``'s model timed with ``threads``; None when it is off."""
        directory = cache_dir()
        if directory is None:
            return None
        return cls(state_key(analysis, threads), directory, machine_tag(threads))

    def _load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable machine-state memory %s (%s)", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("entries"), dict):
            return {}
        return data["entries"]

    def _runs(self, entries: dict[str, Any], key: str | None = None) -> list[dict[str, float | None]]:
        """A key's runs (this one's by default) that are well formed and younger than
        ``MAX_AGE_DAYS``, oldest first."""
        entry = entries.get(self.key if key is None else key)
        runs = entry.get("runs") if isinstance(entry, dict) else None
        oldest = time.time() - MAX_AGE_DAYS * 86400.0
        out = []
        for run in runs if isinstance(runs, list) else []:
            if not isinstance(run, dict):
                continue
            quiet, when = _number(run.get("quiet_ms")), _number(run.get("t"))
            if quiet is None or quiet <= 0 or when is None or when < oldest:
                continue
            out.append({"quiet_ms": quiet, "slope": _within(run.get("slope"), SLOPE_LIMITS),
                        "heavy": _within(run.get("heavy"), HEAVY_LIMITS), "t": when})
        return out[-KEEP_RUNS:]

    def prior(self) -> StatePrior | None:
        """The medians of the remembered runs of this key, the slope from the other models here
        when none of them has one, the heavy load of every model's runs here; None while no run
        of any of them exists."""
        try:
            entries = self._load()
            runs = self._runs(entries)
            slopes = [r["slope"] for r in runs if r["slope"] is not None]
            others = [] if slopes else self._machine_slopes(entries)
            heavy = [r["heavy"] for key in self._machine_keys(entries) for r in self._runs(entries, key)
                     if r["heavy"] is not None]
        except Exception as exc:  # noqa: BLE001 - a hint; never fails a run
            log.warning("ignoring the machine-state memory %s (%s)", self.path, exc)
            return None
        if not runs and not others and not heavy:
            return None
        slope = statistics.median(slopes) if slopes else statistics.median(others) if others else None
        return StatePrior(statistics.median(r["quiet_ms"] for r in runs) if runs else None, slope,
                          len(runs), len(slopes), 0 if slopes else len(others),
                          statistics.median(heavy) if heavy else None)

    def _machine_keys(self, entries: dict[str, Any]) -> list[str]:
        """This key and the other keys remembered with this memory's ``machine`` tag."""
        others = [] if self.machine is None else [
            k for k, e in entries.items() if k != self.key and isinstance(e, dict) and e.get("machine") == self.machine]
        return [self.key, *others]

    def _machine_slopes(self, entries: dict[str, Any]) -> list[float]:
        """The median slope of each other model remembered with this memory's ``machine`` tag."""
        out = []
        for key in self._machine_keys(entries)[1:]:
            slopes = [r["slope"] for r in self._runs(entries, key) if r["slope"] is not None]
            if slopes:
                out.append(statistics.median(slopes))
        return out

    def remember(self, quiet_ms: float, slope: float | None, heavy: float | None = None) -> None:
        """Add one run: the original's latency in its quietest round, the ratio's slope when it
        saw two states, and its heavy load."""
        if self.path is None or _number(quiet_ms) is None or not quiet_ms > 0:
            return
        entries = self._load()
        slope, heavy = _number(slope), _number(heavy)
        runs = [*self._runs(entries), {"quiet_ms": round(float(quiet_ms), 5),
                                       "slope": round(slope, 5) if slope is not None else None,
                                       "heavy": round(heavy, 4) if heavy is not None else None, "t": time.time()}]
        entries[self.key] = {"runs": runs[-KEEP_RUNS:], **({"machine": self.machine} if self.machine else {})}
        if len(entries) > KEEP_KEYS:  # the keys whose last run is oldest go first
            def last(k: str) -> float:
                run = (entries[k].get("runs") or [{}])[-1] if isinstance(entries[k], dict) else {}
                return (_number(run.get("t")) if isinstance(run, dict) else None) or 0.0
            for k in sorted(entries, key=last)[: len(entries) - KEEP_KEYS]:
                del entries[k]
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".states-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": STATE_VERSION, "entries": entries}, f)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file would be, not mkstemp's 0600
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
            tmp = None
        except OSError as exc:
            log.warning("could not write the machine-state memory %s (%s)", self.path, exc)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def _number(x: Any) -> float | None:
    """``x`` as a finite float, or None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _within(x: Any, limits: tuple[float, float]) -> float | None:
    """``x`` as a float when it is a number within ``limits``, else None."""
    x = _number(x)
    return x if x is not None and limits[0] <= x <= limits[1] else None
