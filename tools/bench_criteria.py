"""Which importance criterion picks the better channels?  A multi-seed comparison on digits.

The quality benchmark (``bench_quality.py``) compares at a measured latency, so the widths its
search chooses move with timing noise and one run says little about the *channel choice*.  This
benchmark removes the noise: every criterion prunes the same trained network to the same
deterministic targets, and Torch-Pruning's Taylor (gradients accumulated over the batches, local
ratio) prunes it at the uniform ratio for reference:

* ``ratio=R``: every group keeps the same count, so only the choice of channels differs (the
  Torch-Pruning row at ratio R has the same widths);
* ``flops=P%``: the knapsack chooses widths from the scores too.

For each seed, ``digits_cnn`` is trained from scratch on its own 70/30 split of scikit-learn's
digits; calibration is 8 batches of 64 training images.  Columns: test accuracy as pruned, after
BatchNorm re-calibration, after BN re-calibration + a short fine-tune (identical for every row).
The summary gives the mean over seeds and how many seeds each criterion won (raw accuracy) against
every other row at the same target.

    python tools/bench_criteria.py --seeds 0,1,2,3,4 --criteria taylor,taylor_acc,fisher
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections import defaultdict

import torch
from torch.nn import functional as nnf

import models
from prunepass.api import prune

try:
    from tools.bench_quality import Settings, accuracy, digits_quality, load_digits_data, quiet, tp_digits, train
except ImportError:  # run as a script: tools/ is on the path, the repository root is not
    from bench_quality import Settings, accuracy, digits_quality, load_digits_data, quiet, tp_digits, train  # type: ignore[no-redef]


def run_seed(seed: int, criteria: list[str], targets: list[str], s: Settings) -> dict[tuple[str, str], dict]:
    data = load_digits_data(seed)
    torch.manual_seed(seed)
    model, _ = models.get("digits_cnn")
    trained = train(model, data, s.epochs, 1e-2, seed)
    base = accuracy(trained, data.x_test, data.y_test)
    calib = data.loader(64)[:s.calib_batches]
    example = (torch.zeros(1, 1, 8, 8),)
    s = Settings(**{**s.__dict__, "seed": seed})
    print(f"seed {seed}: trained, test accuracy {100 * base:.2f}%", flush=True)
    out: dict[tuple[str, str], dict] = {}
    for target in targets:
        for criterion in criteria:
            r = prune(copy.deepcopy(trained), example, data=calib, criterion=criterion, target=target,
                      loss_fn=lambda o, b: nnf.cross_entropy(o, b[1]), measure=False, seed=seed)
            widths = [g["kept"] for g in r.report["groups"]]
            out[(target, criterion)] = {**digits_quality(r.model, data, s), "widths": widths}
        if target.startswith("ratio="):
            ratio = float(target.split("=")[1])
            pruned = tp_digits(trained, calib, ratio, global_pruning=False)
            widths = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
            out[(target, "torch-pruning")] = {**digits_quality(pruned, data, s), "widths": widths}
        for (t, name), q in out.items():
            if t == target:
                print(f"  {target:10s} {name:14s} raw {100 * q['acc_raw']:6.2f}  bn {100 * q['acc_bn']:6.2f}  "
                      f"ft {100 * q['acc_ft']:6.2f}  widths {q['widths']}", flush=True)
    return out


def summarise(results: list[dict[tuple[str, str], dict]], targets: list[str]) -> None:
    print("\nmean over seeds (test accuracy %), and raw-accuracy wins against each other row")
    for target in targets:
        names = [n for (t, n) in results[0] if t == target]
        print(f"\n{target}")
        print(f"  {'criterion':14s} {'raw':>6s} {'bn':>6s} {'ft':>6s}  wins (raw) vs " + ", ".join(names))
        for n in names:
            means = {k: 100 * statistics.mean(r[(target, n)][k] for r in results) for k in ("acc_raw", "acc_bn", "acc_ft")}
            wins = defaultdict(int)
            for other in names:
                wins[other] = sum(r[(target, n)]["acc_raw"] > r[(target, other)]["acc_raw"] for r in results)
            print(f"  {n:14s} {means['acc_raw']:6.2f} {means['acc_bn']:6.2f} {means['acc_ft']:6.2f}  "
                  + ", ".join(f"{wins[o]}/{len(results)}" if o != n else "-" for o in names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--criteria", default="taylor,taylor_acc,fisher,magnitude")
    p.add_argument("--targets", default="ratio=0.5,flops=30%")
    args = p.parse_args()
    quiet()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    targets = args.targets.split(",")
    t0 = time.perf_counter()
    results = [run_seed(int(seed), args.criteria.split(","), targets, Settings())
               for seed in args.seeds.split(",")]
    summarise(results, targets)
    print(f"\n{time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
