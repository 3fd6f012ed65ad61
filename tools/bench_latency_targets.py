"""Are latency targets hit?  Prune zoo models to ``latency=P%`` and compare the final measured
onnxruntime latency ratio with the target: ``prune``'s own final timing, original and pruned
interleaved over 5 rounds of 100 runs, the median of the per-round ratios of medians.

    python tools/bench_latency_targets.py --models resnet18,mobilenet_v2 --target 60
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings

import torch

import models
from prunepass.api import prune
from prunepass.data import builtin_calibration, first_of


def run_one(name: str, percent: float, threads: int, strategy: str) -> dict:
    model, inputs = models.get(name)
    data, loss = builtin_calibration(model, inputs, n_batches=4)
    r = prune(model, inputs, data=data, loss_fn=loss, target=f"latency={percent}%", strategy=strategy,
              threads=threads, sample_to_model_inputs=first_of)
    lat = r.report["latency"]
    ratio = lat["ratio"]  # median of per-round ratios, original and pruned timed interleaved
    search = r.search
    return {"model": name, "target": percent / 100, "achieved": ratio, "search_estimate_ms": lat.get("predicted_ms"),
            "search_ratio": search.achieved / search.base if search else float("nan"),
            "met": r.report["met"],
            "original_ms": lat["original"]["median_ms"], "pruned_ms": lat["pruned"]["median_ms"],
            "error": ratio / (percent / 100) - 1, "never_slower": ratio <= 1.0,
            "flops_ratio": r.report["flops"]["pruned"] / r.report["flops"]["original"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,vit,convnext")
    p.add_argument("--target", type=float, default=60.0, help="percent of the original latency")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--json")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    rows = []
    print(f"cpus={os.cpu_count()} torch={torch.__version__} target={args.target}% threads={args.threads}")
    print(f"{'model':14s} {'orig ms':>8s} {'pruned ms':>9s} {'ratio':>6s} {'target':>6s} {'error':>7s} "
          f"{'within 7%':>9s} {'not slower':>10s} {'FLOPs ratio':>11s} {'search said':>11s} {'met':>5s}")
    for name in args.models.split(","):
        try:
            row = run_one(name, args.target, args.threads, args.strategy)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports and continues
            print(f"{name:14s} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        rows.append(row)
        print(f"{name:14s} {row['original_ms']:8.3f} {row['pruned_ms']:9.3f} {row['achieved']:6.3f} "
              f"{row['target']:6.2f} {100 * row['error']:+6.1f}% {str(abs(row['error']) <= 0.07):>9s} "
              f"{str(row['never_slower']):>10s} {row['flops_ratio']:11.3f} {row['search_ratio']:11.3f} {str(row['met']):>5s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
