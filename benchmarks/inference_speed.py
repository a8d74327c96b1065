"""Inference speed of each YOLO-World v2 size: images/s and latency per batch.

    python benchmarks/inference_speed.py --sizes s m l x --batches 1 32 --dtypes fp32 bf16
    python benchmarks/inference_speed.py --ultralytics   # GPU: also time Ultralytics' YOLO-World

Measures the detector forward (random weights are fine for timing) on
preprocessed 640x640 inputs with 80 prompts; bf16 uses autocast. Results are
written as JSON under benchmarks/results/ with the device, versions and date.
`--ultralytics` times Ultralytics' YOLO-World v2 of the same size in the same run
(fused, as its predictor runs it; with `--compile` also compiled by its own
`attempt_compile`) and records the ratios, against the same mode and against its
fastest (install it beside, not into, the project: benchmarks/ultralytics_env.sh,
then PYTHONPATH=benchmarks/.ultralytics). `--compile` adds a row for our detector
compiled by torch.compile (`compile_for_inference`; its compile time is recorded and
not timed). Every row carries the FLOPs per image (convolutions and matrix products,
counted by torch.utils.flop_counter on our detector) and the achieved TFLOP/s;
`--peak-tflops` adds the share of the device's peak (H100 SXM: 989 dense bf16).
`--channels-last` adds rows for our detector in channels_last (NHWC) layout.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from cl_detect import create_detector
from cl_detect.models.fuse import compile_for_inference, fuse_detector
from cl_detect.models.precision import bf16_autocast

RESULTS = Path(__file__).parent / "results"
ULTRALYTICS_SIZES = ("s", "m", "l", "x")


def cpu_description() -> dict:
    """The CPU's model name and the vector units that decide oneDNN's kernels (Linux /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": platform.processor() or platform.machine()}
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    units = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    return {"cpu": fields.get("model name", platform.machine()), "cpu_units": [u for u in units if u in flags]}


def code_version() -> dict:
    """The checkout's commit, and whether it had uncommitted changes (nothing outside a git checkout)."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "uncommitted_changes": bool(changed)}


def environment(device: torch.device) -> dict:
    """Device, versions, commit and date recorded with every result."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": name, "device_type": device.type, **cpu_description(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), **code_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(run, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of `run()` after `warmup` calls (CUDA peak memory is counted from here)."""
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def gflops_per_image(size: str, image_size: int, num_texts: int) -> float:
    """GFLOPs of one image's forward (2 per multiply-add of convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode
    detector = create_detector(f"yolo_world_v2_{size}").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        detector(torch.rand(1, 3, image_size, image_size), torch.randn(1, num_texts, detector.config.text_dim))
    return counter.get_total_flops() / 1e9


def time_first_call(run, device: torch.device) -> float:
    """Seconds of one call of `run()`: the compile when it is compiled, one more warm-up call otherwise."""
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def measure_ours(size: str, batch: int, dtype: str, device: torch.device, image_size: int, num_texts: int,
                 warmup: int, iters: int, fuse: bool = True, compile: bool = False,
                 channels_last: bool = False) -> dict:
    detector = create_detector(f"yolo_world_v2_{size}").to(device).eval()
    if fuse:  # inference path of predict()/evaluation: BatchNorm folded into the convolutions
        fuse_detector(detector)
    images = torch.rand(batch, 3, image_size, image_size, device=device)
    if channels_last:  # NHWC weights and input (cuDNN's tensor-core layout)
        detector.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    text = torch.nn.functional.normalize(torch.randn(1, num_texts, detector.config.text_dim, device=device), dim=-1)
    autocast = bf16_autocast(device, cuda=dtype == "bf16", cpu=dtype == "bf16")
    forward = compile_for_inference(detector, batch) if compile else detector

    def run():
        with torch.no_grad(), autocast:
            forward(images, text)

    first_call_s = time_first_call(run, device)
    times = time_forward(run, device, warmup, iters)
    median = statistics.median(times)
    return {"impl": "cl_detect", "fused": fuse, "compiled": compile, "channels_last": channels_last, "size": size,
            "batch": batch, "dtype": dtype,
            "image_size": image_size, "num_texts": num_texts, "latency_ms_median": median * 1e3,
            "latency_ms_min": min(times) * 1e3, "images_per_s": batch / median, "iters": iters,
            "first_call_s": first_call_s}


def measure_ultralytics(size: str, batch: int, dtype: str, device: torch.device, image_size: int, num_texts: int,
                        warmup: int, iters: int, compile: bool = False) -> dict:
    """Ultralytics' YOLO-World v2 forward of the same size (random weights), same dtype as ours: fused as its
    predictor does (AutoBackend fuse=True); `compile`: through its own `attempt_compile` (its compile=True)."""
    from ultralytics.nn.tasks import WorldModel  # only in the benchmark environment
    from ultralytics.utils.torch_utils import attempt_compile
    model = WorldModel(f"yolov8{size}-worldv2.yaml", verbose=False).to(device).eval()
    # WorldModel holds placeholder text features for its nc (80) classes; set_classes would need CLIP weights
    model.txt_feats = torch.randn(1, num_texts, 512, device=device)
    model.model[-1].nc = num_texts
    model.fuse(verbose=False)
    forward = attempt_compile(model, device, image_size, mode="default") if compile else model
    images = torch.rand(batch, 3, image_size, image_size, device=device)
    autocast = bf16_autocast(device, cuda=dtype == "bf16", cpu=dtype == "bf16")

    def run():
        with torch.no_grad(), autocast:
            forward(images)

    first_call_s = time_first_call(run, device)
    times = time_forward(run, device, warmup, iters)
    median = statistics.median(times)
    return {"impl": "ultralytics", "fused": True, "compiled": compile, "size": size, "batch": batch, "dtype": dtype,
            "image_size": image_size, "num_texts": num_texts, "latency_ms_median": median * 1e3,
            "images_per_s": batch / median, "first_call_s": first_call_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["s", "m", "l", "x"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--num-texts", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ultralytics", action="store_true", help="also time Ultralytics' YOLO-World")
    parser.add_argument("--no-fuse", action="store_true", help="time our detector without Conv-BN fusion")
    parser.add_argument("--compile", action="store_true", help="also time our detector compiled by torch.compile")
    parser.add_argument("--channels-last", action="store_true",
                        help="also time our detector with channels_last (NHWC) weights and input")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for the timed dtype (H100 SXM bf16 dense: 989)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/inference_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        gflops = gflops_per_image(size, args.image_size, args.num_texts)
        for batch in args.batches:
            for dtype in args.dtypes:
                ours = [measure_ours(size, batch, dtype, device, args.image_size, args.num_texts, args.warmup,
                                     args.iters, fuse=not args.no_fuse, compile=compiled, channels_last=nhwc)
                        for compiled in ([False, True] if args.compile else [False])
                        for nhwc in ([False, True] if args.channels_last else [False])]
                theirs = []
                if args.ultralytics and size in ULTRALYTICS_SIZES:
                    theirs = [measure_ultralytics(size, batch, dtype, device, args.image_size, args.num_texts,
                                                  args.warmup, args.iters, compile=compiled)
                              for compiled in ([False, True] if args.compile else [False])]
                for row in theirs + ours:
                    row["gflops_per_image"] = gflops
                    row["achieved_tflops"] = gflops * row["images_per_s"] / 1e3
                    if args.peak_tflops:
                        row["percent_of_peak"] = 100 * row["achieved_tflops"] / args.peak_tflops
                    if theirs and row["impl"] == "cl_detect":  # against the same mode of theirs, and their best
                        same = next(t for t in theirs if t["compiled"] == row["compiled"])
                        row["ratio_vs_ultralytics"] = row["images_per_s"] / same["images_per_s"]
                        row["ratio_vs_fastest_ultralytics"] = row["images_per_s"] / max(
                            t["images_per_s"] for t in theirs)
                    rows.append(row)
                    label = row["impl"] + (" compiled" if row.get("compiled") else "") + (
                        " NHWC" if row.get("channels_last") else "")
                    print(f"{size} bs{batch:<3} {dtype} {label:<20}: {row['images_per_s']:8.2f} img/s, "
                          f"{row['latency_ms_median']:9.1f} ms/batch, {row['achieved_tflops']:.3f} TFLOP/s"
                          + (f", {row['ratio_vs_ultralytics']:.2f}x ultralytics" if "ratio_vs_ultralytics" in row
                             else ""))
    out = Path(args.out) if args.out else RESULTS / f"inference_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "inference_speed", "command": "python benchmarks/inference_speed.py "
                               + " ".join(sys.argv[1:] if argv is None else argv), **environment(device), "results": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
