"""Human report of a prune run: Markdown with PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plots(report: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    groups = report["groups"]
    if groups:
        fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(groups)), 3.6))
        xs = range(len(groups))
        ax.bar(xs, [g["size"] for g in groups], color="#c9d6e8", label="original")
        ax.bar(xs, [g["kept"] for g in groups], color="#2f6db5", label="pruned")
        ax.set_xticks(list(xs), [g["name"] for g in groups], rotation=90, fontsize=7)
        ax.set_ylabel("channels")
        ax.set_title("Channels per group")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "widths.png", dpi=110)
        plt.close(fig)
        made.append(("Channels per group, before and after", "widths.png"))
    search = report.get("search")
    if search and search.get("history"):
        hist = search["history"]
        metric = search["target"].split("=")[0]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([h["value"] for h in hist], [h["score"] for h in hist], s=14, color="#8aa6c8", label="explored")
        ax.axvline(search["goal"], color="#c0392b", linestyle="--", label="target")
        # the chosen plan's score (its final timing may be a re-measurement, so match the nearest value)
        chosen = min(hist, key=lambda h: (abs(h["value"] - search["achieved"]), -h["score"]))
        ax.scatter([search["achieved"]], [chosen["score"]], s=80, color="#e67e22", marker="*", zorder=3,
                   label="chosen")
        ax.set_xlabel(f"{metric} ({'ms' if metric == 'latency' else 'count'})")
        ax.set_ylabel("kept importance")
        ax.set_title(f"Search trade-off ({search['strategy']})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "tradeoff.png", dpi=110)
        plt.close(fig)
        made.append(("Explored candidates: cost against kept importance", "tradeoff.png"))
    lat = report.get("latency")
    if lat:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        names = ["original", "pruned (measured)"]
        vals = [lat["original"]["median_ms"], lat["pruned"]["median_ms"]]
        if "predicted_ms" in lat:
            names.insert(1, "pruned (search)")
            vals.insert(1, lat["predicted_ms"])
        ax.bar(names, vals, color=["#95a5a6", "#f0b27a", "#2f6db5"][: len(vals)])
        if "goal_ms" in lat:
            ax.axhline(lat["goal_ms"], color="#c0392b", linestyle="--", label="target")
            ax.legend()
        ax.set_ylabel("onnxruntime median latency (ms)")
        ax.set_title("Latency: predicted vs measured")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        made.append(("Latency: search estimate vs final measurement", "latency.png"))
    return made


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, label in (("flops", "FLOPs"), ("params", "parameters")):
        o, p = report[key]["original"], report[key]["pruned"]
        rows.append((label, f"{o:,}", f"{p:,}", f"{p / o:.3f}"))
    lat = report.get("latency")
    if lat:
        o, p = lat["original"]["median_ms"], lat["pruned"]["median_ms"]
        # ratio: the median of per-round ratios of the interleaved timing (steadier than o / p)
        rows.append(("ORT latency, median (ms)", f"{o:.3f}", f"{p:.3f}", f"{lat.get('ratio', p / o):.3f}"))
        rows.append(("ORT latency, p10 (ms)", f"{lat['original']['p10_ms']:.3f}", f"{lat['pruned']['p10_ms']:.3f}",
                     f"{lat['pruned']['p10_ms'] / lat['original']['p10_ms']:.3f}"))
    acc = report.get("accuracy")
    if acc:
        rows.append(("accuracy", f"{acc['original']:.4f}", f"{acc['pruned']:.4f}", f"{acc['pruned'] - acc['original']:+.4f}"))
        if "finetuned" in acc:
            rows.append(("accuracy after fine-tune", f"{acc['original']:.4f}", f"{acc['finetuned']:.4f}",
                         f"{acc['finetuned'] - acc['original']:+.4f}"))
    return rows


def write_markdown(report: dict[str, Any], out: Path) -> Path:
    plots = _plots(report, out)
    lines = ["# prunepass report", "",
             f"- target: `{report['target']}` — {'met' if report.get('met', True) else 'NOT met'}",
             f"- strategy: {report['strategy']}, importance: {report['criterion']}"]
    channels = report.get("channels") or {}
    if channels.get("criterion", report["criterion"]) != report["criterion"]:
        losses = channels.get("losses", {})
        lines.append(f"- channels: those of {channels['criterion']} for the chosen widths (calibration loss "
                     + ", ".join(f"{k} {v:.4g}" for k, v in losses.items()) + ")")
    step = (report.get("search") or {}).get("latency_step")
    if step:
        lines.append(f"- widths in multiples of {step['step']} channels ({step_sentence(step)})")
    if report.get("message"):
        lines.append(f"- note: {report['message']}")
    if report.get("seconds") is not None:
        lines.append(f"- run time: {report['seconds']} s")
    lines += ["", "| metric | original | pruned | ratio |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(report)]
    lat = report.get("latency") or {}
    if "predicted_ms" in lat:
        lines += ["", f"Latency: the search measured {lat['predicted_ms']:.3f} ms for its answer (fast ONNX "
                      f"path); the final end-to-end measurement is {lat['pruned']['median_ms']:.3f} ms "
                      f"(target {lat['goal_ms']:.3f} ms)."]
    if lat.get("band_missed"):
        lines += ["", f"**Latency band missed:** the final measurement is {100 * lat['goal_offset']:+.1f} % off the "
                      "goal, outside the +-7 % band (the machine's load moved the ratio; time the model again)."]
    check = lat.get("recheck")
    if check:
        lines += ["", f"Re-check: the first final measurement was {check['measured']:.3f} of the original's latency "
                      f"(goal {check['goal']:.3f}); {len(check['rows'])} plans near the goal were re-timed in the "
                      f"machine's present state and the {check['kept']} was kept."]
    states = lat.get("states")
    if states:
        lines += ["", "Machine states: " + state_sentence(states)]
    lines += ["", "| group | channels | kept | tags | modules |", "| --- | ---: | ---: | --- | --- |"]
    for g in report["groups"]:
        lines.append(f"| {g['name']} | {g['size']} | {g['kept']} | {','.join(g['tags'])} | {', '.join(g['modules'])} |")
    for title, name in plots:
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def step_sentence(step: dict[str, Any]) -> str:
    """Where a latency target's channel step came from, in words."""
    probe = step.get("probe")
    if not probe:
        return f"step from the {step['source']}"
    return "probed: " + ", ".join(f"every channel group at {k} channels timed {v:.3f} of the original"
                                  for k, v in sorted(probe.items(), key=lambda kv: -int(kv[0])))


def state_sentence(states: dict[str, Any]) -> str:
    """One sentence on ``report["latency"]["states"]``: what the run saw of the machine's states
    (its quiet latency, heavy load and the ratio's slope) and what it remembered of earlier runs
    (``prunepass.select.states``)."""
    seen = (f"this run saw the original at {states['quiet_ms']:.3f} ms at its quietest"
            if states.get("quiet_ms") else "this run timed nothing as deployed")
    if states.get("heavy_seen"):
        seen += f", a heavy load of {states['heavy_seen']:.2f}x that"
    if states.get("slope_seen") is not None:
        seen += f" and a ratio that rose {100 * states['slope_seen']:+.1f} % per unit of load"
    else:
        seen += " and no slope (no plan ran in two states)"
    prior = states.get("prior")
    if not prior:
        memo = ("nothing was remembered of earlier runs" if states.get("memory")
                else "the state memory was off")
    else:
        runs = prior.get("runs") or 0
        if prior.get("slope") is not None and prior.get("slope_models"):
            n = prior["slope_models"]
            own = (f"{runs} earlier run{'s' if runs != 1 else ''} of this model here, none in two states; "
                   if runs else "no earlier run of this model here; ")
            memo = (f"{own}the median slope of {n} other model{'s' if n != 1 else ''} remembered here, "
                    f"{100 * prior['slope']:+.1f} %")
        elif prior.get("slope") is not None:
            memo = (f"{prior['slope_runs']} of {runs} earlier run{'s' if runs != 1 else ''} here saw "
                    f"two states, a median slope of {100 * prior['slope']:+.1f} %")
        else:
            memo = (f"{runs} earlier run{'s' if runs != 1 else ''} of this model here, none in two states"
                    if runs else "no earlier run of this model here and no slope remembered")
        if prior.get("heavy"):
            memo += f"; the machine's remembered heavy load {prior['heavy']:.2f}x"
    return f"{seen}; {memo}."
