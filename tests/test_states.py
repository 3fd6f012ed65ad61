"""The memory of the machine's states between latency-targeted runs (``prunepass.select.states``)
and how the latency oracle and ``prune()`` use it."""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import torch

import models
import prunepass.api as api
from prunepass import analyze
from prunepass.plan import Plan
from prunepass.report import state_sentence
from prunepass.select.constraints import ChannelConstraint
from prunepass.select.states import (
    KEEP_RUNS,
    STATE_FILE,
    STATE_VERSION,
    StateMemory,
    StatePrior,
    cache_dir,
    state_key,
)
from prunepass.select.targets import BUSY_FACTOR, DEPLOYED_ROUNDS, STATE_AIM, LatencyOracle
from prunepass.select.uniform import uniform_plan


@pytest.fixture(scope="module")
def digits():
    model, inputs = models.get("digits_cnn")
    return model, inputs, analyze(model, inputs)


def test_memory_keeps_the_medians_of_the_last_runs_per_key(tmp_path):
    mem = StateMemory("k1", tmp_path)
    assert mem.prior() is None
    mem.remember(0.90, 0.10, 1.5)
    mem.remember(0.95, None, 1.2)  # a run that saw one state: no slope
    mem.remember(0.88, 0.12, 1.4)
    mem.remember(0.91, 3.0, 9.0)  # a slope and a load this large are misreadings, not states
    prior = mem.prior()
    assert prior == StatePrior(quiet_ms=pytest.approx(0.905), slope=pytest.approx(0.11), runs=4, slope_runs=2,
                               heavy=pytest.approx(1.4))
    assert StateMemory("k2", tmp_path).prior() is None  # another model / shape / machine
    for i in range(KEEP_RUNS + 3):
        mem.remember(2.0 + i, None)
    assert mem.prior().runs == KEEP_RUNS and mem.prior().quiet_ms > 2.0  # the oldest runs are dropped
    data = json.loads((tmp_path / STATE_FILE).read_text())
    assert set(data["entries"]) == {"k1"} and not [f for f in os.listdir(tmp_path) if f.startswith(".states-")]


def test_a_first_run_starts_from_the_other_models_slope_on_this_machine(tmp_path):
    """A model with no slope of its own takes the median of the other models' median slopes
    remembered with the same machine tag (machine and threads); its own slope, once it has one,
    comes first, and models of another machine tag never count.  The heavy load is the machine's:
    the median over every model's runs with the tag."""
    for key, slopes, heavy in (("a", [0.05, 0.07], 1.5), ("b", [0.09], 2.0), ("c", [None], None)):
        mem = StateMemory(key, tmp_path, "m1")
        for slope in slopes:
            mem.remember(0.5, slope, heavy)
    StateMemory("x", tmp_path, "m2").remember(0.5, 0.2, 3.0)  # another machine / thread count
    StateMemory("old", tmp_path).remember(0.5, 0.2, 3.0)  # written without a tag
    new = StateMemory("new", tmp_path, "m1")
    assert new.prior() == StatePrior(quiet_ms=None, slope=pytest.approx(0.06 / 2 + 0.09 / 2), runs=0, slope_runs=0,
                                     slope_models=2, heavy=pytest.approx(1.5))
    sentence = state_sentence({"quiet_ms": 0.5, "slope_seen": None, "heavy_seen": 1.1,
                               "prior": new.prior().to_dict(), "memory": "f"})
    assert "no earlier run of this model here; the median slope of 2 other models remembered here, +7.5 %" in sentence
    assert "remembered heavy load 1.50x" in sentence and "a heavy load of 1.10x" in sentence
    new.remember(0.6, None, 1.2)  # a run of its own that saw one state: still the machine's slope
    assert new.prior() == StatePrior(quiet_ms=pytest.approx(0.6), slope=pytest.approx(0.075), runs=1, slope_runs=0,
                                     slope_models=2, heavy=pytest.approx(1.5))
    new.remember(0.6, 0.02, 1.2)  # its own slope replaces it
    assert new.prior() == StatePrior(quiet_ms=pytest.approx(0.6), slope=pytest.approx(0.02), runs=2, slope_runs=1,
                                     heavy=pytest.approx(statistics.median([1.2, 1.2, 1.5, 1.5, 2.0])))
    # "c" saw one state only: the median of a (0.06), b (0.09) and now "new" (0.02)
    assert StateMemory("c", tmp_path, "m1").prior().slope == pytest.approx(0.06)
    assert StateMemory("none", tmp_path, "m3").prior() is None
    # the oracle uses a machine slope and heavy load like its own remembered ones
    oracle = LatencyOracle.__new__(LatencyOracle)
    oracle.prior, oracle.deployed_rounds = StateMemory("new2", tmp_path, "m1").prior(), {}
    assert oracle.state_slope() == pytest.approx(0.06) and oracle.heavy_load() == pytest.approx(1.5)
    assert oracle.state_gap() == pytest.approx(1 + 0.06 * 0.5)


def test_a_corrupt_memory_reads_as_empty_and_is_rewritten(tmp_path, caplog):
    (tmp_path / STATE_FILE).write_text("{not json")
    mem = StateMemory("k", tmp_path)
    assert mem.prior() is None
    mem.remember(0.9, 0.1)
    assert mem.prior().slope == pytest.approx(0.1)
    now = time.time()
    # records that are not what remember() writes are skipped one by one; runs past the age limit too
    runs = [{"quiet_ms": "x", "t": now}, 5, {"quiet_ms": 0.8, "slope": 0.2, "t": now - 40 * 86400},
            {"quiet_ms": 0.9, "slope": "y", "heavy": "z", "t": now}, {"quiet_ms": 1.0, "slope": 0.05, "t": now}]
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": STATE_VERSION, "entries": {"k": {"runs": runs}}}))
    assert mem.prior() == StatePrior(quiet_ms=pytest.approx(0.95), slope=pytest.approx(0.05), runs=2, slope_runs=1)
    mem.remember(1.1, None)
    assert mem.prior().runs == 3
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": STATE_VERSION, "entries": {"k": {"runs": 5}, "j": 3}}))
    assert mem.prior() is None
    mem.remember(0.9, None)
    assert mem.prior().runs == 1
    # a path that cannot be read or written: warnings, never an exception
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / STATE_FILE).mkdir()
    blocked = StateMemory("k", tmp_path / "blocked")
    assert blocked.prior() is None
    blocked.remember(0.9, 0.1)
    assert "machine-state memory" in caplog.text


def test_no_home_directory_turns_the_memory_off(monkeypatch):
    from pathlib import Path

    for name in ("PRUNEPASS_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert cache_dir() is None


def test_memory_location_and_switch(tmp_path, monkeypatch, digits):
    _, inputs, a = digits
    monkeypatch.setenv("PRUNEPASS_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path and StateMemory.for_analysis(a, 1).path == tmp_path / STATE_FILE
    monkeypatch.setenv("PRUNEPASS_STATE_MEMORY", "0")
    assert cache_dir() is None and StateMemory.for_analysis(a, 1) is None
    # the key tells apart threads and input shapes of one architecture
    model = models.get("digits_cnn")[0]
    wide = analyze(model, (inputs[0].repeat(4, 1, 1, 1),))
    assert len({state_key(a, 1), state_key(a, 2), state_key(wide, 1)}) == 3
    assert state_key(a, 1) == state_key(analyze(model, inputs), 1)


def test_a_remembered_slope_moves_a_one_state_estimate_toward_the_heavy_load(digits):
    """A search that saw only one state uses the remembered slope and heavy load as if it had
    seen them; the remembered quiet latency tells it that rounds it took for quiet were in fact
    busy.  What the run sees itself comes first."""
    _, _, a = digits
    oracle = LatencyOracle(a)
    plan = uniform_plan(a, 0.25, constraint=ChannelConstraint(step=8))
    other = uniform_plan(a, 0.5, constraint=ChannelConstraint(step=8))
    key = oracle._key(plan)
    oracle.deployed_rounds[key] = [(1.20, 0.44), (1.22, 0.45), (1.21, 0.44)]  # one state, and which one?
    assert oracle.deployed_estimate(plan) == pytest.approx(0.44)  # nothing remembered: its plain median

    def at_quiet(quiet_ms, slope):
        return statistics.median(r / (1 + slope * (t / quiet_ms - 1)) for t, r in oracle.deployed_rounds[key])

    oracle.prior = StatePrior(quiet_ms=0.90, slope=0.1, runs=5, slope_runs=4, heavy=1.5)
    assert oracle.state_gap() == pytest.approx(1.05)
    # 1.2 ms is busy (load 1.33) for a machine whose original runs 0.9 ms when quiet: brought back to load 1
    # and moved STATE_AIM of the way up to the remembered heavy load
    assert oracle.deployed_estimate(plan) == pytest.approx(at_quiet(0.90, 0.1) * (1 + STATE_AIM * 0.05))
    assert at_quiet(0.90, 0.1) < 0.44
    oracle.prior = StatePrior(quiet_ms=1.19, slope=0.1, runs=5, slope_runs=4, heavy=1.5)  # 1.2 ms is quiet here
    assert oracle.deployed_estimate(plan) == pytest.approx(at_quiet(1.20, 0.1) * (1 + STATE_AIM * 0.05))
    # rounds within the busy factor of the run's own quietest are quiet, whatever is remembered
    oracle.prior = StatePrior(quiet_ms=0.90, slope=0.1, runs=5, slope_runs=4, heavy=1.5)
    oracle.deployed_rounds[key] = [(0.95, 0.40), (1.02, 0.41)]
    assert oracle.state_values(plan) == (pytest.approx(at_quiet(0.95, 0.1)), pytest.approx(at_quiet(0.95, 0.1) * 1.05))
    oracle.deployed_rounds[key] = [(1.20, 0.44), (1.22, 0.45), (1.21, 0.44)]
    oracle.prior = StatePrior(quiet_ms=1.19, slope=0.1, runs=5, slope_runs=4)
    # a slope this run saw itself overrides the remembered one
    busy = 1.20 * BUSY_FACTOR * 1.05
    oracle.deployed_rounds[oracle._key(other)] = [(1.20, 0.30), (busy, 0.31)]
    seen = (0.31 / 0.30 - 1) / (busy / 1.20 - 1)
    assert oracle.state_slope() == pytest.approx(seen) and oracle.state_slope(plan) == pytest.approx(seen)
    heavy = oracle.heavy_load()
    assert heavy == pytest.approx(1.22 / 1.20)  # the 80th percentile of the loads 1, 1, 1.008, 1.017, 1.176
    assert oracle.deployed_estimate(plan) == pytest.approx(at_quiet(1.20, seen) * (1 + STATE_AIM * seen * (heavy - 1)))


def test_run_states_counts_the_final_measurement(digits):
    _, _, a = digits
    oracle = LatencyOracle(a)
    plan = uniform_plan(a, 0.25, constraint=ChannelConstraint(step=8))
    key = oracle._key(plan)
    assert oracle.run_states() == (None, None, None)
    oracle.deployed_rounds[key] = [(0.90, 0.40), (0.92, 0.40)]
    assert oracle.run_states() == (pytest.approx(0.90), None, pytest.approx(0.92 / 0.90))  # one state seen
    final = [(1.2, 0.44), (1.25, 0.44), (0.95, 0.40)]
    quiet_ms, slope, heavy = oracle.run_states({key: final})
    assert quiet_ms == pytest.approx(0.90)
    assert slope == pytest.approx(0.1 / ((1.225 - 0.92) / 0.90))  # busy rounds 10 % up at a median load 0.34 higher
    assert heavy == pytest.approx(1.2 / 0.90)  # loads 1, 1.02, 1.06, 1.33, 1.39
    assert len(oracle.deployed_rounds[key]) == 2  # the final rounds are not added to the oracle


def test_state_sentence_says_what_was_seen_and_remembered():
    seen = {"quiet_ms": 0.9, "slope_seen": 0.1, "heavy_seen": 1.8, "prior": None, "memory": "/x/machine_states.json"}
    assert "rose +10.0 % per unit of load" in state_sentence(seen) and "1.80x" in state_sentence(seen)
    assert "nothing was remembered" in state_sentence(seen)
    one = {"quiet_ms": 0.9, "slope_seen": None, "heavy_seen": 1.0,
           "prior": {"quiet_ms": 0.9, "slope": 0.08, "runs": 3, "slope_runs": 2, "heavy": 1.6}, "memory": "/x"}
    assert "no slope" in state_sentence(one) and "2 of 3 earlier runs" in state_sentence(one)
    assert "+8.0 %" in state_sentence(one) and "heavy load 1.60x" in state_sentence(one)
    assert "the state memory was off" in state_sentence({**seen, "memory": None})


def test_prune_remembers_the_states_for_the_next_run(digits, monkeypatch, tmp_path):
    """``prune()`` hands the remembered prior to its latency oracle and adds its own run to the
    memory after the final measurement; the report says both."""
    model, inputs, _ = digits
    priors = []

    def select(a, scores, target, *, evaluator, **kw):  # no search: the wiring only
        priors.append(getattr(evaluator.latency, "prior", None))
        return Plan.from_keep(a, {}), None

    monkeypatch.setattr(api, "select_plan", select)
    monkeypatch.setenv("PRUNEPASS_CACHE_DIR", str(tmp_path))
    x = inputs[0].repeat(8, 1, 1, 1)
    first = api.prune(model, (x,), target="latency=90%")
    states = first.report["latency"]["states"]
    assert priors == [None] and states["prior"] is None and states["quiet_ms"] > 0
    assert (tmp_path / STATE_FILE).exists()
    second = api.prune(model, (x,), target="latency=90%")
    assert priors[1] is not None and priors[1].runs == 1
    assert second.report["latency"]["states"]["prior"]["runs"] == 1
    monkeypatch.setenv("PRUNEPASS_STATE_MEMORY", "off")
    third = api.prune(model, (x,), target="latency=90%")
    assert priors[2] is None and third.report["latency"]["states"]["memory"] is None
    monkeypatch.delenv("PRUNEPASS_STATE_MEMORY")
    api.prune(model, (x,), target="latency=90%", state_memory=False)
    # FLOPs targets time nothing and remember nothing
    api.prune(model, (x,), target="flops=90%")
    assert len(priors) == 5
    assert StateMemory.for_analysis(second.analysis, 1).prior().runs == 2  # the first two runs only
    assert torch.equal(model.features[0].weight, models.get("digits_cnn")[0].features[0].weight)


def test_cli_prints_the_states_and_can_leave_the_memory_alone(capsys, monkeypatch, tmp_path):
    from prunepass.cli import main

    monkeypatch.setattr(api, "select_plan", lambda a, *args, **kw: (Plan.from_keep(a, {}), None))
    monkeypatch.setenv("PRUNEPASS_CACHE_DIR", str(tmp_path / "cache"))
    for extra in ([], ["--no-state-memory"]):
        out_dir = tmp_path / f"out{len(extra)}"
        code = main(["prune", "digits_cnn", "--target", "latency=90%", "--criterion", "magnitude",
                     "--out", str(out_dir), "--quiet", *extra])
        out = capsys.readouterr().out
        assert code == 0 and "machine states: this run saw the original at" in out
        states = json.loads((out_dir / "report.json").read_text())["latency"]["states"]
        assert (states["memory"] is None) == bool(extra)
        assert ("Machine states:" in (out_dir / "report.md").read_text())
    assert StateMemory.for_analysis(analyze(*models.get("digits_cnn")), 1).prior().runs == 1  # only the first run


def test_a_latency_search_counts_its_timings_on_a_progress_bar(digits, monkeypatch, capsys):
    """With ``show_progress`` a latency target's timings are counted on a bar while the search
    runs (search timings and deployed ones alike), and the bar is closed and detached after."""
    model, inputs, _ = digits
    seen = []

    def select(a, scores, target, *, evaluator, **kw):  # two timings, then no plan change
        oracle = evaluator.latency
        seen.append(oracle.progress)
        half = uniform_plan(a, 0.5, constraint=ChannelConstraint(step=8))
        oracle(half)
        oracle.deployed_ratios([half])
        seen.append(getattr(oracle.progress, "n", None))
        return Plan.from_keep(a, {}), None

    monkeypatch.setattr(api, "select_plan", select)
    result = api.prune(model, inputs, target="latency=90%", show_progress=True, state_memory=False)
    assert seen[0] is not None and seen[1] == 2
    # the deployed rounds in turn: (seconds, plan number, original's ms, ratio), the final measurement after them
    states = result.report["latency"]["states"]
    times = [t for t, _, _, _ in states["timeline"]]
    assert len(times) == DEPLOYED_ROUNDS and times == sorted(times) and states["final_at"] >= times[-1]
    assert all(ms > 0 and 0 < ratio < 1.5 for _, _, ms, ratio in states["timeline"])
    assert "timing plans for latency=90%" in capsys.readouterr().err
    quiet = api.prune(model, inputs, target="latency=90%", state_memory=False)
    assert seen[2:] == [None, None] and quiet.report["latency"]["ratio"] > 0
    assert result.report["latency"]["ratio"] > 0
