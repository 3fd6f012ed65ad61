"""The ``prunepass`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from prunepass.errors import PrunepassError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_MODEL, EXIT_TARGET = 0, 1, 2, 3, 4

EPILOG = """exit codes: 0 ok, 2 bad arguments, 3 model could not be loaded/captured/rewritten,
4 target not met with --strict, 1 anything else.

MODEL is one of:
  a built-in model name     resnet18, vit, llama, ... (see: prunepass inspect --list)
  package.module:factory    a function returning (model, example_inputs) or a model (+ --input-shape)
  file.pt2                  a program saved with torch.export.save

examples:
  prunepass inspect resnet18                 IR dump with groups and barriers
  prunepass inspect vit --json -o vit.json   the same as JSON
  prunepass inspect bert --tables            the reference product's inspection tables
"""


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace("x", ",").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape must look like 1,3,224,224, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunepass", description="Structured pruning of PyTorch models as a "
                                "compiler pass: inspect, profile, prune, time and export.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and the requested output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or info logs")

    ins = sub.add_parser("inspect", parents=[common], help="show the IR dump: symbolic shapes, channel groups, barriers",
                         description="Capture MODEL with torch.export, run the channel dataflow and print "
                         "one line per node with symbolic channel shapes, then every group (prunable or not, "
                         "with reasons) and every barrier.", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ins.add_argument("model", nargs="?", help="MODEL (see below)")
    ins.add_argument("--list", action="store_true", help="list the built-in models and exit")
    ins.add_argument("--entry-point", default="forward", help="method to capture, e.g. backbone.forward_features")
    ins.add_argument("--input-shape", type=_shape, help="random input shape for factories that return a model only")
    ins.add_argument("--json", action="store_true", help="print JSON instead of text")
    ins.add_argument("--tables", action="store_true", help="print the inspection tables (unprunable groups)")
    ins.add_argument("--module", help="with --tables: dependencies of one module, e.g. layer1.0.conv1")
    ins.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    ins.set_defaults(func=cmd_inspect)

    prof = sub.add_parser("profile", parents=[common], help="FLOPs / params (/ latency) of the original and min/centroid/max sub-nets",
                          description="Size of the search space and the cost of its extreme sub-nets, from the "
                          "cost formulas (instant); --latency also measures onnxruntime latency.", epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(prof)
    prof.add_argument("--latency", action="store_true", help="also measure ORT latency (min / max sub-nets)")
    prof.add_argument("--min-channels", type=int, default=1, help="smallest width a group may take (default 1)")
    prof.add_argument("--step", type=int, default=None, help="width step (default: 1 up to 64 channels, 4 above)")
    prof.add_argument("--keep", action="append", metavar="PATTERN",
                      help="never prune the groups this glob matches: a group name (g3), a tag (head_dim: "
                           "whole heads only) or a module whose outputs they are (fc, layer4.*); repeatable")
    prof.add_argument("--json", action="store_true", help="print JSON")
    prof.set_defaults(func=cmd_profile)

    pr = sub.add_parser("prune", parents=[common], help="prune to a target and write the pruned model, plan, ONNX and report",
                        description="Capture, score channels (gradients on calibration data, magnitude without "
                        "data), select channels under the target, rewrite, export ONNX and measure.",
                        epilog=EPILOG + """
targets:
  --target latency=60%      onnxruntime median latency at most 60% of the original (measured here)
  --target latency=2.5      ... at most 2.5 ms
  --target flops=50%        FLOPs at most half;   --target params=5e6   at most 5M parameters
  --target ratio=0.4        remove 40% of the channels of every group (uniform)

data:
  built-in models calibrate on built-in data (scikit-learn digits for image models, generated
  token ids for text models) with a self-distillation loss; --data package.module:factory
  returns (loader, loss_fn) or a loader of batches.
""", formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(pr)
    pr.add_argument("--target", required=True, help="latency=60%% | flops=50%% | params=5e6 | ratio=0.4")
    pr.add_argument("--strategy", default="auto", choices=["auto", "uniform", "global", "target", "knapsack", "optimal"])
    pr.add_argument("--criterion", default="taylor", choices=["taylor", "taylor_acc", "fisher", "magnitude"])
    pr.add_argument("--data", help="package.module:factory returning (loader, loss_fn) or a loader")
    pr.add_argument("--steps", type=int, default=8, help="calibration batches (default 8)")
    pr.add_argument("--min-channels", type=int, default=1, help="smallest width per group")
    pr.add_argument("--step", type=int, default=None, help="width step (latency targets: 8 is a good choice)")
    pr.add_argument("--keep", action="append", metavar="PATTERN",
                    help="never prune the groups this glob matches: a group name (g3), a tag (head_dim: "
                         "whole heads only) or a module whose outputs they are (fc, layer4.*); repeatable")
    pr.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for timing")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--no-state-memory", action="store_true",
                    help="latency targets: neither use nor record what earlier runs saw of this machine's quiet "
                         "and busy states (kept in ~/.cache/prunepass; PRUNEPASS_STATE_MEMORY=0 does the same)")
    pr.add_argument("--strict", action="store_true", help="fail (exit 4) when the target cannot be met")
    pr.add_argument("--unreachable", default="knee", choices=["knee", "fastest"],
                    help="a latency goal no plan reaches (knapsack): the plan near the fastest where a few "
                         "percent more latency stops buying much lower loss (knee, default) or the fastest plan")
    pr.add_argument("--out", type=Path, default=Path("prunepass_out"), help="output folder (default prunepass_out)")
    pr.set_defaults(func=cmd_prune)

    lat = sub.add_parser("latency", parents=[common], help="robust onnxruntime latency of an ONNX file",
                         description="Fixed threads, sequential execution, warm-up, many runs; reports p10, "
                         "median, p90 and the spread.  On shared machines trust p10 and the median.")
    lat.add_argument("onnx", type=Path, help="model.onnx")
    lat.add_argument("--threads", type=int, default=1)
    lat.add_argument("--runs", type=int, default=200)
    lat.add_argument("--warmup", type=int, default=20)
    lat.add_argument("--provider", default="CPUExecutionProvider")
    lat.add_argument("--batch", type=int, default=1, help="size for symbolic batch dims")
    lat.add_argument("--json", action="store_true")
    lat.set_defaults(func=cmd_latency)

    ex = sub.add_parser("export", parents=[common], help="re-apply a saved plan to MODEL and emit ONNX", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(ex)
    ex.add_argument("--plan", type=Path, required=True, help="plan.json written by prune")
    ex.add_argument("--state-dict", type=Path, help="pruned_state_dict.pt to load into the rebuilt model")
    ex.add_argument("-o", "--output", type=Path, default=Path("pruned.onnx"))
    ex.add_argument("--opset", type=int, default=18)
    ex.add_argument("--dynamic-batch", action="store_true")
    ex.add_argument("--program", action="store_true", help="rewrite the exported program instead of the module")
    ex.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", parents=[common], help="the main job on built-in data: train, prune to a latency target, report",
                          description="Trains the built-in digits CNN on scikit-learn's digits, prunes it to a "
                          "latency target with gradient importance, re-calibrates BatchNorm, fine-tunes briefly "
                          "and prints original vs pruned FLOPs, params, ORT latency and accuracy.")
    demo.add_argument("--target", default="latency=60%")
    demo.add_argument("--batch", type=int, default=64, help="inference batch size the latency is measured at")
    demo.add_argument("--out", type=Path, default=Path("prunepass_demo"))
    demo.set_defaults(func=cmd_demo)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="MODEL (see below)")
    p.add_argument("--entry-point", default="forward", help="method to capture, e.g. backbone.forward_features")
    p.add_argument("--input-shape", type=_shape, help="random input shape for factories that return a model only")


def cmd_inspect(args: argparse.Namespace) -> int:
    import models
    from prunepass.analysis import analyze
    from prunepass.loading import load_model

    if args.list:
        for name in models.names():
            print(f"{name:15s} {models.MODELS[name].description}")
        return EXIT_OK
    if not args.model:
        print("prunepass inspect: error: MODEL is required (or --list)", file=sys.stderr)
        return EXIT_USAGE
    model, inputs = load_model(args.model, args.input_shape)
    a = analyze(model, inputs, args.entry_point)
    if args.json:
        text = a.to_json()
    elif args.tables:
        from prunepass import tables

        text = (tables.tabulate_module_dependencies(args.module, a, model) if args.module
                else tables.tabulate_unprunable_groups(a, model))
    else:
        text = a.dump()
    _emit(text, args.output)
    if not args.quiet and not args.json:
        logging.getLogger("prunepass").info(
            "%d groups (%d prunable), %d barriers; export %.2fs, analysis %.3fs", len(a.groups),
            len(a.prunable_groups), len(a.barriers), a.captured.export_seconds, a.seconds)
    return EXIT_OK


def _constraint(args: argparse.Namespace):
    from prunepass.select.constraints import ChannelConstraint

    return ChannelConstraint(absolute_min=args.min_channels, step=args.step,
                             rules={p: None for p in getattr(args, "keep", None) or ()})


def cmd_profile(args: argparse.Namespace) -> int:
    from prunepass.analysis import analyze
    from prunepass.loading import load_model
    from prunepass.profile import profile_analysis

    model, inputs = load_model(args.model, args.input_shape)
    a = analyze(model, inputs, args.entry_point)
    stats = profile_analysis(a, _constraint(args), latency=args.latency)
    if args.json:
        _emit(json.dumps(stats, indent=1), None)
        return EXIT_OK
    rows = [("", "FLOPs", "params") + (("latency ms",) if args.latency else ())]
    for k in ("max", "centroid", "min"):
        st = stats[k]
        rows.append((k, f"{st['flops']:,} ({st['flops_ratio']:.2f})", f"{st['params']:,} ({st['params_ratio']:.2f})")
                    + ((f"{st['latency_ms']:.3f}" if st.get("latency_ms") is not None else "-",) if args.latency else ()))
    from prunepass.tables import grid

    text = grid(rows[1:], header=rows[0])
    text += (f"\nsearch space: {stats['search_space_size']:.3g} sub-nets over {stats['configurable']} configurable "
             f"groups ({stats['prunable_groups']} prunable, {stats['unprunable_groups']} unprunable)")
    _emit(text, None)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from prunepass.api import prune
    from prunepass.data import builtin_calibration, first_of
    from prunepass.errors import TargetNotMetError
    from prunepass.loading import load_model
    from prunepass.report import state_sentence, step_sentence, summary_rows
    from prunepass.tables import grid

    model, inputs = load_model(args.model, args.input_shape)
    sample_fns = {}
    if args.data:
        loader, loss_fn = _load_data(args.data, model)
    elif args.criterion != "magnitude":
        loader, loss_fn = builtin_calibration(model, inputs, n_batches=args.steps)
        sample_fns["sample_to_model_inputs"] = first_of
    else:
        loader, loss_fn = None, None
    try:
        result = prune(model, inputs, data=loader, loss_fn=loss_fn, target=args.target, strategy=args.strategy,
                       criterion=args.criterion, constraint=_constraint(args), entry_point=args.entry_point,
                       calibration_steps=args.steps, out_dir=args.out, strict=args.strict, threads=args.threads,
                       seed=args.seed, show_progress=not args.quiet, state_memory=not args.no_state_memory,
                       unreachable=args.unreachable, **sample_fns)
    except TargetNotMetError as exc:
        print(f"prunepass prune: target not met: {exc}", file=sys.stderr)
        return EXIT_TARGET
    rep = result.report
    _emit(grid(summary_rows(rep), header=["", "original", "pruned", "ratio"]), None)
    states = (rep.get("latency") or {}).get("states")
    if states:
        _emit(f"machine states: {state_sentence(states)}", None)
    step = (rep.get("search") or {}).get("latency_step")
    if step:
        _emit(f"widths in multiples of {step['step']} channels ({step_sentence(step)})", None)
    status = "met" if rep["met"] else "NOT met (closest result kept)"
    lat = rep.get("latency") or {}
    if lat.get("band_missed"):
        status = (f"met by the search, but the final measurement is {100 * lat['goal_offset']:+.1f} % off the goal "
                  "(outside the +-7 % band: see the warning)")
    _emit(f"target {rep['target']}: {status}; strategy {rep['strategy']}; wrote {args.out}/ "
          "(model.onnx, plan.json, pruned_state_dict.pt, report.json, report.md)", None)
    return EXIT_OK


def _load_data(spec: str, model):
    import importlib

    mod_name, _, attr = spec.partition(":")
    made = getattr(importlib.import_module(mod_name), attr)()
    if isinstance(made, tuple) and len(made) == 2 and callable(made[1]):
        return made
    import torch.nn.functional as F  # noqa: N812

    return made, lambda out, batch: F.cross_entropy(out, batch[1])  # a plain loader: (x, label) batches


def cmd_latency(args: argparse.Namespace) -> int:
    from prunepass.onnx_backend import make_session, measure_latency, random_feeds

    if not args.onnx.exists():
        print(f"prunepass latency: error: no such file: {args.onnx}", file=sys.stderr)
        return EXIT_USAGE
    sess = make_session(args.onnx, args.threads, args.provider)
    stats = measure_latency(None, random_feeds(sess, args.batch), threads=args.threads, warmup=args.warmup,
                            runs=args.runs, provider=args.provider, session=sess)
    _emit(json.dumps(stats.to_dict(), indent=1) if args.json else str(stats), None)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from prunepass.analysis import analyze
    from prunepass.loading import load_model
    from prunepass.onnx_backend import export_onnx
    from prunepass.plan import Plan
    from prunepass.rewrite import apply_plan, prune_program

    model, inputs = load_model(args.model, args.input_shape)
    a = analyze(model, inputs, args.entry_point)
    plan = Plan.load(args.plan)
    if args.program:
        target = prune_program(a, plan)
    else:
        target = apply_plan(model, a, plan)
        if args.state_dict:
            target.load_state_dict(torch.load(args.state_dict, weights_only=True))
    export_onnx(target, a.captured.args, a.captured.kwargs, args.output, opset=args.opset,
                dynamic_batch=args.dynamic_batch)
    _emit(f"wrote {args.output}", None)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from prunepass.demo import run_demo
    from prunepass.report import summary_rows
    from prunepass.tables import grid

    report = run_demo(target=args.target, batch=args.batch, out=args.out, quiet=args.quiet)
    _emit(f"prunepass demo: digits CNN (scikit-learn digits), target {report['target']}, "
          f"ORT latency at batch {args.batch}", None)
    _emit(grid(summary_rows(report), header=["", "original", "pruned", "ratio / change"]), None)
    _emit(f"target {'met' if report['met'] else 'NOT met'}; report: {args.out}/report.md", None)
    return EXIT_OK


def _emit(text: str, path: Path | None) -> None:
    if path is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") else text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("torch", "torch._export", "torch.export", "torch.fx", "torch.onnx", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.INFO)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except PrunepassError as exc:
        print(f"prunepass {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except OSError as exc:
        print(f"prunepass {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyError, ValueError) as exc:
        print(f"prunepass {args.command}: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
