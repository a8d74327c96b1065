"""Training step speed and peak memory per detector size and method.

    python benchmarks/train_speed.py --sizes t s --image-size 640 --batch 2 --methods finetune distill lora

One step = text embedding (frozen tower, cached), forward, the official loss,
backward and an AdamW step, on random images with 8 random boxes each and 80
prompts per image. Prints images/s and peak memory per (size, method) and, for
each method, the step-time and memory ratios against `finetune` (issue targets:
distill step <= 1.25x, lora memory <= 0.6x). Results go to benchmarks/results/.

Peak memory is what training adds to the process: weights, gradients, optimizer
state, activations and temporaries. On CUDA that is `max_memory_allocated`. On a
CPU it is the growth of the resident set over the process's size before the model
is built, measured in a second fresh process whose glibc returns every freed
tensor to the system (MALLOC_MMAP_THRESHOLD_), so the peak RSS follows live tensor
memory rather than the allocator's retained free blocks. That process is slower
and is used for memory only; the total peak RSS of the timing process is kept too.
The RSS also counts the runtime's own buffers (oneDNN's among them), so that process
also records `peak_tensor_mb`, the peak of live tensor memory by the profiler's
allocation record (tensor_memory.py): the same quantity CUDA's figure counts.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from cl_detect import create_detector
from cl_detect.methods import ContinualModel, TaskContext, create_method
from cl_detect.models.text_encoders import TextEncoder
from cl_detect.engine.runlog import peak_memory_mb
from cl_detect.models.precision import bf16_autocast

from inference_speed import RESULTS, environment, time_forward
from tensor_memory import TensorPeak


class TableTextEncoder(TextEncoder):
    """A frozen lookup table standing in for CLIP: timing excludes the text tower, as in
    training with a frozen, cached tower."""

    def __init__(self, dim: int = 512):
        super().__init__(dim)
        self.table = torch.nn.Embedding(4096, dim)

    def encode(self, texts: list[str]) -> torch.Tensor:
        index = torch.tensor([hash(t) % 4096 for t in texts], device=self.table.weight.device)
        return self.table(index)


def make_batch(batch: int, image_size: int, num_texts: int, device: torch.device, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, 8, 2, generator=generator) * image_size * 0.8 + image_size * 0.1
    half = torch.rand(batch, 8, 2, generator=generator) * image_size * 0.1 + 8
    boxes = torch.cat([centre - half, centre + half], -1).clamp(0, image_size)
    return {"images": torch.rand(batch, 3, image_size, image_size, generator=generator).to(device),
            "texts": [[f"class {i}" for i in range(num_texts)] for _ in range(batch)],
            "gt_boxes": boxes.to(device), "gt_labels": torch.randint(0, num_texts, (batch, 8), generator=generator).to(device),
            "gt_mask": torch.ones(batch, 8, dtype=torch.bool, device=device), "image_ids": torch.arange(batch), "meta": []}


MMAP_THRESHOLD = "65536"  # bytes: every larger allocation is its own mapping, unmapped when freed


def resident_mb() -> float:
    """The current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def added_memory_mb(device: torch.device, resident_before: float) -> float:
    """Peak memory the model and its training added: CUDA peak allocation, or CPU peak RSS growth."""
    if device.type == "cuda":
        return peak_memory_mb(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10 - resident_before


def method_spec(spec: str) -> tuple[str, dict]:
    """'distill:compile_teacher=true,cls_weight=0.5' -> ("distill", {...}); values are read as YAML."""
    from cl_detect._yaml import load_yaml
    name, _, options = spec.partition(":")
    pairs = [item.split("=", 1) for item in options.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"method {spec!r}: options are key=value pairs separated by commas")
    return name, {key: load_yaml(value) for key, value in pairs}


def measure(size: str, method_names: list[str], batch: dict, device: torch.device, iters: int, warmup: int,
            bf16: bool, channels_last: bool = False) -> dict:
    resident_before = resident_mb() if device.type == "cpu" else 0.0
    detector = create_detector(f"yolo_world_v2_{size}")
    if channels_last:  # NHWC weights and images (cuDNN's tensor-core layout), before distill copies a teacher
        detector.to(memory_format=torch.channels_last)
        batch = {**batch, "images": batch["images"].contiguous(memory_format=torch.channels_last)}
    methods = [create_method(*method_spec(spec)) for spec in method_names]
    model = ContinualModel(detector, TableTextEncoder(detector.config.text_dim), methods).to(device).train()
    model.hook("before_task", TaskContext(index=0, name="bench", vocabulary=tuple(batch["texts"][0])))
    params = [p for _, p, _ in model.named_trainable_parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    autocast = bf16_autocast(device, cuda=bf16, cpu=bf16)

    def step():
        with autocast:
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = time_forward(step, device, warmup, iters)
    trainable, total = model.parameter_counts()
    median = statistics.median(times)
    return {"size": size, "method": "+".join(method_names), "channels_last": channels_last, "batch": len(batch["images"]),
            "image_size": batch["images"].shape[-1], "step_ms_median": median * 1e3,
            "images_per_s": len(batch["images"]) / median,
            "peak_memory_mb": added_memory_mb(device, resident_before), "peak_rss_mb": peak_memory_mb(torch.device("cpu")),
            "trainable_params": trainable, "total_params": total}


def measure_ultralytics(size: str, batch: dict, device: torch.device, iters: int, warmup: int, bf16: bool) -> dict:
    """Ultralytics' YOLO-World v2 of the same size: forward, its v8 detection loss, backward, AdamW."""
    resident_before = resident_mb() if device.type == "cpu" else 0.0
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import WorldModel
    model = WorldModel(f"yolov8{size}-worldv2.yaml", verbose=False).to(device).train()
    model.args = get_cfg()  # default loss gains, as its trainer sets them
    images = batch["images"]
    size_px = images.shape[-1]
    mask = batch["gt_mask"]
    boxes = batch["gt_boxes"][mask] / size_px
    xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    theirs = {"img": images, "batch_idx": mask.nonzero()[:, 0].float(), "cls": batch["gt_labels"][mask].float()[:, None],
              "bboxes": xywh, "txt_feats": torch.nn.functional.normalize(
                  torch.randn(len(images), len(batch["texts"][0]), 512, device=device), dim=-1)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = bf16_autocast(device, cuda=bf16, cpu=bf16)

    def step():
        with autocast:
            loss, _ = model.loss(theirs)
        loss.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = time_forward(step, device, warmup, iters)
    median = statistics.median(times)
    return {"size": size, "method": "ultralytics", "batch": len(images), "image_size": size_px,
            "step_ms_median": median * 1e3, "images_per_s": len(images) / median,
            "peak_memory_mb": added_memory_mb(device, resident_before),
            "peak_rss_mb": peak_memory_mb(torch.device("cpu")), "trainable_params": sum(p.numel() for p in model.parameters()),
            "total_params": sum(p.numel() for p in model.parameters())}


def _measure_args(args: tuple, trace_tensors: bool = False) -> dict:
    """`measure` or `measure_ultralytics`; `trace_tensors`: also the peak of live tensor memory,
    batch, model and optimizer state included (`peak_tensor_mb`, the CPU counterpart of CUDA's
    `max_memory_allocated`; profiling makes the run slower, so it is for memory-only runs)."""
    size, names, batch_args, device_name, iters, warmup, bf16, channels_last = args
    device = torch.device(device_name)
    with TensorPeak() if trace_tensors else nullcontext() as peak:
        batch = make_batch(*batch_args, device)
        if names == ["ultralytics"]:
            row = measure_ultralytics(size, batch, device, iters, warmup, bf16)
        else:
            row = measure(size, names, batch, device, iters, warmup, bf16, channels_last)
    return {**row, "peak_tensor_mb": peak.mb} if trace_tensors else row


def measure_isolated(*args, memory_only: bool = False) -> dict:
    """`measure` in a fresh process, so the CPU peak RSS belongs to this (size, method) alone;
    `memory_only`: with glibc returning freed tensors to the system (slower, memory only)."""
    import multiprocessing
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if memory_only:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD  # the spawned interpreter's glibc reads it at start
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_measure_args, (args, memory_only))
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved


def measure_row(size: str, names: list[str], batch_args: tuple, device: str, iters: int, warmup: int,
                bf16: bool, channels_last: bool = False, with_memory: bool = True) -> dict:
    """Time (size, method) in one fresh process; on a CPU take its memory from a second one."""
    row = measure_isolated(size, names, batch_args, device, iters, warmup, bf16, channels_last)
    if with_memory and torch.device(device).type == "cpu":
        memory = measure_isolated(size, names, batch_args, device, 1, 1, bf16, channels_last, memory_only=True)
        row.update(peak_memory_mb=memory["peak_memory_mb"], peak_tensor_mb=memory["peak_tensor_mb"])
    return row


def uses_bf16(args) -> bool:
    """bf16 autocast for the steps: on CUDA unless --no-bf16, on a CPU with --cpu-bf16."""
    return not args.no_bf16 and (torch.device(args.device).type == "cuda" or args.cpu_bf16)


def measure_rounds(size: str, args) -> list[dict]:
    """One row per method: timed `args.rounds` times round-robin (so slow spells of the machine hit
    every method alike), the median round reported; memory is taken in the first round only."""
    batch_args = (args.batch, args.image_size, args.num_texts)
    rounds = [[measure_row(size, method.split("+"), batch_args, args.device, args.iters, args.warmup,
                           uses_bf16(args), args.channels_last, with_memory=index == 0)
               for method in args.methods] for index in range(args.rounds)]
    rows = []
    for first, *others in zip(*rounds):
        times = [first["step_ms_median"]] + [row["step_ms_median"] for row in others]
        median = statistics.median(times)
        rows.append({**first, "bf16_autocast": uses_bf16(args), "step_ms_median": median, "step_ms_rounds": times,
                     "images_per_s": first["batch"] / median * 1e3})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["t", "s"])
    parser.add_argument("--methods", nargs="+", default=["finetune"],
                        help="'+' joins a composition, ':key=value,...' sets options "
                             "(distill:compile_teacher=true); 'ultralytics' times Ultralytics' YOLO-World step "
                             "(PYTHONPATH=benchmarks/.ultralytics, see ultralytics_env.sh)")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-texts", type=int, default=80)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-bf16", action="store_true", help="float32 steps on CUDA")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="bf16 autocast on a CPU too, for every row, Ultralytics' included "
                             "(our trainer: TrainConfig.amp_cpu)")
    parser.add_argument("--channels-last", action="store_true",
                        help="our detector and images in channels_last (NHWC) layout (Ultralytics' row unchanged)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every method this many times, round-robin, each in a fresh process, and "
                             "report the median round (steadier ratios on a noisy machine)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        baseline = None
        for method, row in zip(args.methods, measure_rounds(size, args)):
            if method == "finetune":
                baseline = row
            if baseline is not None and row is not baseline and method == "ultralytics":
                row["finetune_speed_vs_ultralytics"] = baseline["images_per_s"] / row["images_per_s"]
            elif baseline is not None and row is not baseline:
                row["step_time_vs_finetune"] = row["step_ms_median"] / baseline["step_ms_median"]
                row["memory_vs_finetune"] = row["peak_memory_mb"] / baseline["peak_memory_mb"]
                if "peak_tensor_mb" in row:
                    row["tensor_memory_vs_finetune"] = row["peak_tensor_mb"] / baseline["peak_tensor_mb"]
            rows.append(row)
            extra = (f", {row['step_time_vs_finetune']:.2f}x step, {row['memory_vs_finetune']:.2f}x memory"
                     if "step_time_vs_finetune" in row else "")
            if "tensor_memory_vs_finetune" in row:
                extra += f" ({row['tensor_memory_vs_finetune']:.2f}x tensor memory)"
            if "finetune_speed_vs_ultralytics" in row:
                extra = f", our finetune step is {row['finetune_speed_vs_ultralytics']:.2f}x as fast"
            print(f"{size} {row['method']:<16} {row['images_per_s']:8.2f} img/s  {row['step_ms_median']:9.1f} ms/step"
                  f"  peak {row['peak_memory_mb']:8.0f} MB  trainable {row['trainable_params']:,}{extra}")
    out = Path(args.out) if args.out else RESULTS / f"train_speed_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    note = ("each row is timed in a fresh process; peak_memory_mb is the peak RSS growth over the process before "
            "the model was built, in a second fresh process with MALLOC_MMAP_THRESHOLD_=" + MMAP_THRESHOLD
            + "; peak_tensor_mb is, in that process, the peak of live tensor memory by the profiler's allocation "
            "record (batch, model, optimizer state, activations; the counterpart of CUDA's max_memory_allocated)"
            + "; peak_rss_mb is the timing process's whole peak RSS") if device.type == "cpu" else (
            "each row runs in a fresh process; peak_memory_mb is torch.cuda.max_memory_allocated")
    out.write_text(json.dumps({"benchmark": "train_speed", "command": "python benchmarks/train_speed.py "
                               + " ".join(sys.argv[1:] if argv is None else argv), **environment(device), "note": note, "results": rows},
                              indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
