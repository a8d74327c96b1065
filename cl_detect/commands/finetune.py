"""`cl-detect finetune CONFIG`: fine-tune a checkpoint on a single task.

    cl-detect finetune my_task.yaml

The config has the `pretrain` form with `init_checkpoint` (required) and one
dataset; `methods` chooses what trains (default: everything but the text tower).
"""
from __future__ import annotations

import argparse

from cl_detect.commands.pretrain import add_arguments  # noqa: F401  (same options)


def run(args: argparse.Namespace) -> int:
    from cl_detect.engine.pretrain import finetune

    finetune(args.config, allow_data_errors=args.allow_data_errors, resume=not args.no_resume)
    return 0
