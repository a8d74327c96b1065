"""`cl-detect plot`: figures from result files.

    cl-detect plot results/ --out figures/

Writes accuracy-matrix heatmaps per method, the retention-vs-in-domain Pareto
scatter (WiSE sweeps as curves) and per-task AP curves as PNG files; see
`cl_detect.bench.plot` for what each shows.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="result JSON files and/or folders holding them")
    parser.add_argument("--out", required=True, help="folder for the PNG files")


def run(args: argparse.Namespace) -> int:
    from cl_detect.bench.plot import plot_all
    from cl_detect.bench.results import ResultError, load_results
    try:
        written = plot_all(load_results(args.results), args.out)
    except ResultError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not written:
        print("error: nothing to plot: no finished runs among the results", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0
