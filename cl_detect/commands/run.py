"""`cl-detect run`: run a continual protocol for methods and seeds.

    cl-detect run experiments/synthetic.yaml
    cl-detect run experiments/odinw-mini.yaml --methods finetune lora+distill --seeds 0 1 2 --out results/

Writes one JSON per (protocol, method, seed) under `OUT/<protocol>/`; finished
runs are skipped unless `--force`, failed and interrupted ones continue from
the last finished task. Exit status 1 when any run failed.
"""
from __future__ import annotations

import argparse

from cl_detect.commands._arguments import image_size, non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="protocol YAML (merged over experiments/defaults.yaml)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="method lists, '+' composes (lora+distill); default: the protocol's, else every "
                             "registered method alone")
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=None,
                        help="seeds (default: the protocol's)")
    parser.add_argument("--out", default="results", help="results folder; runs are written to OUT/<protocol>/")
    parser.add_argument("--force", action="store_true", help="redo runs that already finished")
    parser.add_argument("--max-train-images", type=positive_int, default=None,
                        help="cap every task's training images (a fixed-seed subset; default: every image)")
    parser.add_argument("--image-size", type=image_size, default=None,
                        help="training and evaluation image size, a multiple of 32 (default: the protocol's)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: the protocol's)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's model state after it finishes")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="runs at once, one process each (CPU: 2 on 2 cores beats 2 threads in one)")
    parser.add_argument("--defaults", default=None, help="defaults YAML (default: experiments/defaults.yaml)")
    parser.add_argument("--allow-data-errors", action="store_true",
                        help="train even when the dataset doctor finds errors in a task's training set or in "
                             "data a method mixes in (mix sources, replay's pretraining images)")
    parser.add_argument("--override", nargs="+", default=[], metavar="YAML",
                        help="settings merged last, in order, like the protocol over the defaults (a list "
                             "replaces, a mapping such as train is merged one level), e.g. a baseline "
                             "file: baselines/head_only.yaml")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # unsupported: each process would run every method and seed and write the same result files
        raise ValueError(f"cl-detect run does not run under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}): "
                         f"start it as one process (--jobs N runs N runs at once); to pretrain a base model "
                         f"on several GPUs, use `torchrun ... -m cl_detect.cli pretrain CONFIG` and point "
                         f"base_model.checkpoint at its output")

    from cl_detect.bench.config import DEFAULTS_PATH, load_run_config
    from cl_detect.bench.experiment import run_experiment, with_overrides
    overrides = {"allow_data_errors": True} if args.allow_data_errors else {}
    config = load_run_config(args.config, args.defaults or DEFAULTS_PATH, overrides=overrides,
                             override_files=args.override)
    config = with_overrides(config, args.image_size, args.max_train_images, args.device, args.methods)
    outcomes = run_experiment(config, args.methods, args.seeds, args.out, force=args.force,
                              keep_checkpoints=args.keep_checkpoints, jobs=args.jobs)
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("finished", "skipped", "failed", "interrupted")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; results in {Path(args.out) / config.name}/")
    return 1 if counts["failed"] else 0
