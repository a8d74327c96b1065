"""`cl-detect` entry point.

Each command lives in its own module under `cl_detect.commands` exposing
`add_arguments(parser)` and `run(args) -> int`; a command module imports what
it needs (models, data, plots) inside `run`, so `cl-detect --help` stays fast.
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


DESCRIPTION = "Continual fine-tuning of open-vocabulary detectors (YOLO-World v2) and its benchmark."
EPILOG = ("`cl-detect COMMAND --help` lists a command's options. Bad input stops with one message naming it "
          "and the fix (exit status 2); set CL_DETECT_DEBUG=1 for the traceback.")


def build_parser() -> argparse.ArgumentParser:
    from cl_detect.commands._arguments import HelpFormatter

    parser = argparse.ArgumentParser(prog="cl-detect", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
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
    a training guard's stop likewise (exit status 2). Ctrl-C prints one line, with how to resume
    for the training commands, and exits with 130. Set CL_DETECT_DEBUG=1 to see the traceback."""
    import os

    from cl_detect.engine.guards import TrainingError
    args = build_parser().parse_args()
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, OSError, TrainingError) as err:  # DatasetError is a ValueError; OSError: a path
        if os.environ.get(DEBUG_VARIABLE):
            raise
        print(f"error: {err}{_path_fix(err)}\n(set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get(DEBUG_VARIABLE):
            raise
        hint = RESUME_HINTS.get(args.command, "")
        print(f"\ninterrupted: cl-detect {args.command} stopped by Ctrl-C. {hint}".rstrip(), file=sys.stderr)
        return 130  # the shell's status for a command stopped by SIGINT


def _path_fix(err: Exception) -> str:
    """The fix for an OS error on a path given on the command line or in a config."""
    if isinstance(err, IsADirectoryError):
        return " (a folder where a file is expected: name the file)"
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        return " (a file where a folder is expected: name a folder)"
    if isinstance(err, PermissionError):
        return " (no permission: choose another path, e.g. another --out, or change the permissions)"
    return ""


RESUME_HINTS = {
    command: "Run the same command again to continue from the last checkpoint (a Ctrl-C during training "
             "writes one after the step under way; others are written at every epoch end, and every "
             "train.checkpoint_every_steps steps when set)."
    for command in ("run", "pretrain", "finetune")
}


if __name__ == "__main__":  # `python -m cl_detect.cli` (torchrun's entry) behaves as the script does
    sys.exit(console_main())
