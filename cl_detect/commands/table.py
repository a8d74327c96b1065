"""`cl-detect table`: one comparison table from result files.

    cl-detect table results/ --format md
    cl-detect table results/synthetic/*.json --format latex --out table.tex

One row per method (mean ± std over seeds, 95% t-interval when n >= 3), one
table per protocol; failed runs are listed, never averaged. See
`cl_detect.bench.table` for the columns and the conventions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="result JSON files and/or folders holding them")
    parser.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="table format")
    parser.add_argument("--out", default=None, help="write the table to this file instead of printing it")


def run(args: argparse.Namespace) -> int:
    from cl_detect.bench.results import ResultError, load_results
    from cl_detect.bench.table import format_table
    try:
        text = format_table(load_results(args.results), args.format)
    except ResultError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
