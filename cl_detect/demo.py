"""`make demo` (`python -m cl_detect.demo`): the whole story on a CPU in minutes, no downloads.

1. write the synthetic world and pretrain a tiny YOLO-World on its base
   vocabulary with the offline MiniLM text encoder (both cached under `cache/`);
2. run the `synthetic` protocol (experiments/synthetic.yaml) for every
   registered method alone and two compositions, one seed, two runs at a time;
3. print the comparison table and write the plots to `results/demo/`.

Run it from the repository root. `--fresh` redoes everything including the
cache; `--jobs 1` runs one method at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

COMPOSITIONS = ("lora+distill", "lora+replay")


def demo_methods() -> list[str]:
    """Every registered method alone, then the compositions whose parts are registered."""
    from cl_detect.methods import list_methods
    registered = list_methods()
    return registered + [c for c in COMPOSITIONS if all(part in registered for part in c.split("+"))]


def _plain_table(results) -> str:
    """In-domain Avg and retention per method, for when the table module is not available."""
    lines = ["| method | in-domain Avg | " + " | ".join(f"R {s}" for s in results[0].retention_sets) + " |"]
    lines.append("|" + "---|" * (2 + len(results[0].retention_sets)))
    for result in results:
        if not result.finished:
            lines.append(f"| {result.method} | failed: {result.error_line} |")
            continue
        summary = result.summary()
        cells = [f"{100 * summary[f'retention_{s}']:.1f}" for s in result.retention_sets]
        lines.append(f"| {result.method} | {100 * summary['in_domain_avg']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cl_detect.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/demo", help="results folder")
    parser.add_argument("--config", default="experiments/synthetic.yaml", help="protocol file")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one process and one thread each)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method + two compositions")
    parser.add_argument("--fresh", action="store_true", help="remake the world, base model and every run")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    start = time.perf_counter()
    from cl_detect.bench.config import load_run_config
    from cl_detect.bench.experiment import run_experiment
    from cl_detect.bench.prepare import prepare_protocol
    from cl_detect.bench.results import load_results
    config = load_run_config(args.config)
    if args.fresh:
        import shutil
        shutil.rmtree(config.data_root, ignore_errors=True)
        Path(config.base_model.checkpoint).unlink(missing_ok=True)
    prepare_protocol(config)
    prepared = time.perf_counter()
    methods = args.methods or demo_methods()
    outcomes = run_experiment(config, methods, [0], args.out, force=args.fresh, jobs=args.jobs)
    ran = time.perf_counter()
    results = load_results([Path(args.out) / config.name])
    results = [r for r in results if r.method in {o["method"] for o in outcomes}]
    try:
        from cl_detect.bench.table import format_table
        table = format_table(results, "md")
    except ImportError:
        table = _plain_table(results)
    print("\n" + table)
    try:
        from cl_detect.bench.plot import plot_all
        plots = plot_all(results, Path(args.out) / "plots")
        print(f"plots: {', '.join(str(p) for p in plots)}")
    except ImportError:
        pass
    total = time.perf_counter() - start
    timing = {"total_s": total, "world_and_base_model_s": prepared - start, "runs_s": ran - prepared,
              "runs": len(outcomes), "jobs": args.jobs, "cpus": os.cpu_count(),
              "load_average_after": os.getloadavg()}
    (Path(args.out) / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    print(f"demo: {total:.0f} s in all (world + base model {prepared - start:.0f} s, {len(outcomes)} runs "
          f"{ran - prepared:.0f} s, {os.cpu_count()} CPUs); results in {args.out}/{config.name}/")
    return 1 if any(o["status"] == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
