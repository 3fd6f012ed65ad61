"""The ``prunepass`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from prunepass.errors import PrunepassError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3

EPILOG = """MODEL is one of:
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

    ins = sub.add_parser("inspect", help="show the IR dump: symbolic shapes, channel groups, barriers",
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
    return p


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
    for noisy in ("torch", "torch._export", "torch.export", "torch.fx"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.INFO)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except PrunepassError as exc:
        print(f"prunepass {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except KeyError as exc:
        print(f"prunepass {args.command}: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
