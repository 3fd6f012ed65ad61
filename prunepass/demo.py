"""The main job on built-in data: train the digits CNN, prune it to a latency target, recover
accuracy briefly, and report original vs pruned."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

log = logging.getLogger(__name__)


def run_demo(target: str = "latency=60%", batch: int = 64, out: str | Path = "prunepass_demo",
             quiet: bool = False, epochs: int = 30, finetune_epochs: int = 5) -> dict[str, Any]:
    import models
    from prunepass.api import prune
    from prunepass.data import accuracy, batches, digits_dataset, train_classifier
    from prunepass.importance import finetune_bn
    from prunepass.report import write_markdown

    out = Path(out)
    x_tr, y_tr, x_te, y_te = digits_dataset()
    model, _ = models.get("digits_cnn")
    log.info("training digits_cnn on %d digits for %d epochs", len(x_tr), epochs)
    train_classifier(model, x_tr, y_tr, epochs=epochs)
    acc0 = accuracy(model, x_te, y_te)
    calib = batches(x_tr, y_tr, 64, shuffle_seed=1)[:8]
    example = (x_te[:batch].clone() if len(x_te) >= batch else torch.randn(batch, 1, 8, 8),)
    result = prune(model, example, data=calib, loss_fn=lambda o, b: F.cross_entropy(o, b[1]), target=target,
                   out_dir=None, show_progress=not quiet)
    pruned = result.model
    acc1 = accuracy(pruned, x_te, y_te)
    tuned = copy.deepcopy(pruned)
    finetune_bn(tuned, batches(x_tr, y_tr, 64, shuffle_seed=2), steps=20)
    train_classifier(tuned, x_tr, y_tr, epochs=finetune_epochs, lr=3e-3, seed=3)
    acc2 = accuracy(tuned, x_te, y_te)
    result.model = tuned
    result.report["accuracy"] = {"original": acc0, "pruned": acc1, "finetuned": acc2}
    result.report["demo"] = {"model": "digits_cnn", "batch": batch, "train_samples": len(x_tr),
                             "test_samples": len(x_te)}
    from prunepass.api import _emit_and_measure

    first = result.report.get("latency") or {}
    _emit_and_measure(result, model, out, 1, True)  # the fine-tuned model's export, timed again
    for key in ("states", "recheck"):  # what prune()'s own measurement saw and did
        if key in first:
            result.report["latency"][key] = first[key]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(tuned.state_dict(), out / "pruned_state_dict.pt")
    result.plan.save(out / "plan.json")
    (out / "report.json").write_text(json.dumps(result.report, indent=1, default=float))
    write_markdown(result.report, out)
    return result.report
