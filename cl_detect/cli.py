"""`cl-detect` entry point.

Each command lives in its own module under `cl_detect.commands` exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when
their command runs, so `cl-detect --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "predict": ("cl_detect.commands.predict", "detect objects named by text prompts in images"),
    "data": ("cl_detect.commands.data", "convert, check, pack or synthesize datasets"),
    "eval": ("cl_detect.commands.evaluate", "score a COCO-format detections file (COCO or LVIS rules)"),
    "pretrain": ("cl_detect.commands.pretrain", "open-vocabulary pretraining of a detector from a YAML config"),
    "finetune": ("cl_detect.commands.finetune", "fine-tune a checkpoint on one task from a YAML config"),
    "run": ("cl_detect.commands.run", "run a continual protocol for methods and seeds (one JSON per run)"),
    "table": ("cl_detect.commands.table", "one comparison table (md, latex, csv) from result files"),
    "plot": ("cl_detect.commands.plot", "heatmaps, Pareto scatter and per-task curves from result files"),
    "analyze": ("cl_detect.commands.analyze", "error analysis by object size and a confusion matrix"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cl-detect", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        command_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


DEBUG_VARIABLE = "CL_DETECT_DEBUG"


def console_main() -> int:
    """The `cl-detect` script: `main`, with the errors that describe bad input (a config, a dataset,
    a file; they name it and the fix) printed as one message instead of under a traceback, and
    a training guard's stop likewise. Set CL_DETECT_DEBUG=1 to see the traceback as well."""
    import os

    from cl_detect.engine.guards import TrainingError
    try:
        return main()
    except (ValueError, FileNotFoundError, TrainingError) as err:  # DatasetError is a ValueError
        if os.environ.get(DEBUG_VARIABLE):
            raise
        print(f"error: {err}\n(set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
