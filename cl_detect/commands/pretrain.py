"""`cl-detect pretrain CONFIG`: open-vocabulary pretraining of a detector (see `cl_detect.engine.pretrain`).

    cl-detect pretrain experiments/pretrain/synthetic_base.yaml
    torchrun --nproc_per_node 8 -m cl_detect.cli pretrain experiments/pretrain/coco_base.yaml

Runs the dataset doctor on every dataset first and refuses to train on errors
unless --allow-data-errors; an interrupted run continues from its out_dir.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by `pretrain` and `finetune`."""
    parser.add_argument("config", help="YAML config (see docs/pretraining.md)")
    parser.add_argument("--allow-data-errors", action="store_true",
                        help="train even when the dataset doctor reports errors")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over even if out_dir holds a checkpoint of an interrupted run")


def run(args: argparse.Namespace) -> int:
    from cl_detect.engine.pretrain import pretrain

    pretrain(args.config, allow_data_errors=args.allow_data_errors, resume=not args.no_resume)
    return 0
