"""The command line: each subcommand on a small built-in network, outputs parse and agree with
the Python API; bad arguments give a clear message and a non-zero exit code."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

import models
from prunepass import analyze
from prunepass.cli import main
from prunepass.costs import CostModel, count_params
from prunepass.plan import Plan
from prunepass.rewrite import apply_plan


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_text_json_tables(capsys, tmp_path):
    code, out, _ = run(capsys, "inspect", "digits_cnn")
    assert code == 0 and out.startswith("# prunepass IR") and "groups:" in out
    model, inputs = models.get("digits_cnn")
    assert out == analyze(model, inputs).dump()
    code, _, _ = run(capsys, "inspect", "digits_cnn", "--json", "-o", str(tmp_path / "d.json"))
    d = json.loads((tmp_path / "d.json").read_text())
    assert code == 0 and [g["name"] for g in d["groups"]] == ["g0", "g1", "g2", "g3", "u4"]
    code, out, _ = run(capsys, "inspect", "digits_cnn", "--tables")
    assert code == 0 and "Unprunable group 4" in out and "classifier.2" in out
    code, out, _ = run(capsys, "inspect", "--list")
    assert code == 0 and "resnet50" in out and "llama" in out


def test_profile_json_matches_cost_model(capsys):
    code, out, _ = run(capsys, "profile", "resnet18", "--json")
    assert code == 0
    stats = json.loads(out)
    model, inputs = models.get("resnet18")
    cm = CostModel(analyze(model, inputs))
    assert stats["max"]["flops"] == cm.flops() and stats["max"]["params"] == cm.params()
    assert stats["min"]["flops"] < stats["centroid"]["flops"] < stats["max"]["flops"]
    assert stats["search_space_size"] > 1e6 and stats["configurable"] == 12
    code, out, _ = run(capsys, "profile", "resnet18")
    assert code == 0 and "search space" in out and "centroid" in out
    # --keep: g0 and the groups of layer4's convolutions (not the stage's input) leave the
    # search space; the min sub-net gets bigger
    code, out, _ = run(capsys, "profile", "resnet18", "--json", "--keep", "layer4.*", "--keep", "g0")
    kept = json.loads(out)
    assert code == 0 and kept["configurable"] == 12 - 4
    assert kept["min"]["flops"] > stats["min"]["flops"] and kept["max"]["flops"] == stats["max"]["flops"]


def test_prune_latency_export_round_trip(capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, "prune", "digits_cnn", "--target", "flops=50%", "--out", str(out_dir), "--quiet")
    assert code == 0, out
    assert "FLOPs" in out and "target flops=50%: met" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert report["flops"]["pruned"] <= 0.5 * report["flops"]["original"]
    lat = report["latency"]
    assert lat["pruned"]["median_ms"] > 0
    # the latency ratio is the median of the interleaved rounds' ratios, not a ratio of medians
    from prunepass.api import FINAL_ROUNDS

    rr = sorted(lat["round_ratios"])
    assert len(rr) == FINAL_ROUNDS == 6 and lat["ratio"] == pytest.approx((rr[2] + rr[3]) / 2)
    assert (out_dir / "report.md").read_text().startswith("# prunepass report")
    assert (out_dir / "widths.png").stat().st_size > 1000
    proto = onnx.load(str(out_dir / "model.onnx"))
    onnx.checker.check_model(proto)
    # plan + state dict rebuild the pruned module with the Python API
    model, inputs = models.get("digits_cnn")
    a = analyze(model, inputs)
    plan = Plan.load(out_dir / "plan.json")
    rebuilt = apply_plan(model, a, plan)
    state = torch.load(out_dir / "pruned_state_dict.pt", weights_only=True)
    rebuilt.load_state_dict(state)
    assert count_params(rebuilt) == report["params"]["pruned"]

    code, out, _ = run(capsys, "latency", str(out_dir / "model.onnx"), "--runs", "20", "--json")
    stats = json.loads(out)
    assert code == 0 and stats["runs"] == 20 and stats["p10"] <= stats["median"] <= stats["p90"]

    code, out, _ = run(capsys, "export", "digits_cnn", "--plan", str(out_dir / "plan.json"), "--state-dict",
                       str(out_dir / "pruned_state_dict.pt"), "-o", str(tmp_path / "e.onnx"), "--dynamic-batch")
    assert code == 0 and (tmp_path / "e.onnx").exists()
    dims = onnx.load(str(tmp_path / "e.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # symbolic batch


@pytest.mark.parametrize("argv,code,message", [
    (["inspect", "nosuchmodel"], 3, "unknown model"),
    (["prune", "digits_cnn", "--target", "speed=3"], 2, "target must look like"),
    (["latency", "/nonexistent/model.onnx"], 2, "no such file"),
    (["export", "digits_cnn", "--plan", "/nonexistent/plan.json"], 2, "No such file"),
    (["inspect", "digits_cnn", "--entry-point", "nope"], 3, "has no method 'nope'"),
    (["inspect"], 2, "MODEL is required"),
])
def test_bad_arguments(capsys, argv, code, message):
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        got = exc.code
    _, err = capsys.readouterr()
    assert got == code
    assert message in err


def test_strict_unreachable_target_exit_code(capsys, tmp_path):
    code, _, err = run(capsys, "prune", "digits_cnn", "--target", "flops=1%", "--min-channels", "16", "--strict",
                       "--criterion", "magnitude", "--out", str(tmp_path / "o"))
    assert code == 4 and "target not met" in err


def test_prune_prints_the_latency_step_and_why(capsys, monkeypatch, tmp_path):
    """A latency target's channel step (probed or set) is printed and written to report.md."""
    import prunepass.api as api
    from prunepass.select.strategies import SearchReport

    step = {"step": 16, "source": "probe", "probe": {8: 0.61, 16: 0.52}}
    monkeypatch.setattr(api, "select_plan", lambda a, *args, **kw: (
        Plan.from_keep(a, {}), SearchReport("knapsack", "latency=90%", 1.0, 0.9, 0.9, True, latency_step=step)))
    monkeypatch.setenv("PRUNEPASS_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["prune", "digits_cnn", "--target", "latency=90%", "--criterion", "magnitude", "--out",
                 str(tmp_path / "out"), "--quiet"])
    out = capsys.readouterr().out
    said = ("widths in multiples of 16 channels (probed: every channel group at 16 channels timed 0.520 of the "
            "original, every channel group at 8 channels timed 0.610 of the original)")
    assert code == 0 and said in out
    assert said in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["search"]["latency_step"]["step"] == 16
