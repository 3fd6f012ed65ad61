"""The human report: Markdown plus the three plots, also when the chosen latency was re-timed."""

from __future__ import annotations

from prunepass.report import summary_rows, write_markdown


def test_report_plots_with_retimed_answer(tmp_path):
    report = {
        "target": "latency=60%", "strategy": "knapsack", "criterion": "taylor", "met": True, "message": "",
        "flops": {"original": 1000, "pruned": 400}, "params": {"original": 100, "pruned": 50},
        "groups": [{"name": "g0", "size": 16, "kept": 8, "tags": [], "modules": ["conv1"]}],
        "search": {"strategy": "knapsack", "target": "latency=60%", "base": 1.0, "goal": 0.6,
                   "achieved": 0.58,  # re-timed: not one of the history values
                   "history": [{"value": 0.9, "score": 0.9}, {"value": 0.55, "score": 0.7}]},
        "latency": {"original": {"median_ms": 1.0, "p10_ms": 0.9}, "pruned": {"median_ms": 0.59, "p10_ms": 0.55},
                    "ratio": 0.59, "predicted_ms": 0.58, "goal_ms": 0.6},
        "accuracy": {"original": 0.99, "pruned": 0.9, "finetuned": 0.98},
    }
    path = write_markdown(report, tmp_path)
    text = path.read_text()
    for png in ("widths.png", "tradeoff.png", "latency.png"):
        assert (tmp_path / png).stat().st_size > 2000 and f"({png})" in text
    rows = {r[0]: r for r in summary_rows(report)}
    assert rows["FLOPs"][3] == "0.400" and rows["accuracy after fine-tune"][2] == "0.9800"
    assert "target 0.600 ms" in text


def test_report_names_the_other_criterion_when_its_channels_were_kept(tmp_path):
    report = {
        "target": "flops=50%", "strategy": "knapsack", "criterion": "taylor", "met": True, "message": "",
        "flops": {"original": 1000, "pruned": 500}, "params": {"original": 100, "pruned": 60},
        "groups": [{"name": "g0", "size": 16, "kept": 8, "tags": [], "modules": ["conv1"]}], "search": None,
        "channels": {"criterion": "taylor_acc", "losses": {"taylor": 0.45, "taylor_acc": 0.43}},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    text = write_markdown(report, tmp_path / "a").read_text()
    assert "- channels: those of taylor_acc for the chosen widths (calibration loss taylor 0.45, taylor_acc 0.43)" in text
    report["channels"] = {"criterion": "taylor", "losses": {"taylor": 0.4, "taylor_acc": 0.43}}
    assert "- channels:" not in write_markdown(report, tmp_path / "b").read_text()


def test_report_says_where_the_latency_step_came_from(tmp_path):
    report = {
        "target": "latency=50%", "strategy": "knapsack", "criterion": "taylor", "met": True, "message": "",
        "flops": {"original": 1000, "pruned": 300}, "params": {"original": 100, "pruned": 40},
        "groups": [{"name": "g0", "size": 32, "kept": 16, "tags": [], "modules": ["conv1"]}],
        "search": {"strategy": "knapsack", "target": "latency=50%", "base": 1.0, "goal": 0.5, "achieved": 0.5,
                   "history": [{"value": 0.5, "score": 0.7}],
                   "latency_step": {"step": 16, "source": "probe", "probe": {8: 0.538, 16: 0.405}}},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    text = write_markdown(report, tmp_path / "a").read_text()
    assert ("- widths in multiples of 16 channels (probed: every channel group at 16 channels timed 0.405 of the "
            "original, every channel group at 8 channels timed 0.538 of the original)") in text
    report["search"]["latency_step"] = {"step": 4, "source": "constraint"}
    assert "- widths in multiples of 4 channels (step from the constraint)" in write_markdown(report, tmp_path / "b").read_text()
