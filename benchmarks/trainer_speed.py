"""Full fine-tuning trainer throughput, ours vs Ultralytics' YOLO-World trainer, on the same data.

    python benchmarks/trainer_speed.py --sizes s l --image-size 640 --batch 32 --workers 12 --ultralytics

Both trainers run on a copy of Aquarium train (the shared folder's YOLO txt + data.yaml, copied to
a temporary folder so that Ultralytics' label cache is never written into shared data) with
mosaic and the rest of their default augmentation on, AMP on a GPU, AdamW, EMA, and a frozen,
cached text tower (ours: a lookup table; theirs: `get_text_pe` patched to fixed random features,
so neither loads CLIP). Unlike `train_speed.py`, which times the model step on a resident batch,
this times whole trainer iterations: loading, augmentation, collate, host-to-device copy, forward,
loss, backward, optimizer and EMA. Images/s is counted between the end of batch `--warmup` and
the end of batch `--warmup + --batches`; each trainer runs in a fresh process (peak memory is its
own). Needs PYTHONPATH=benchmarks/.ultralytics for `--ultralytics` (benchmarks/ultralytics_env.sh).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

from cl_detect import create_detector
from cl_detect._shared import shared_dir
from cl_detect.commands._arguments import positive_int
from cl_detect.data.readers import read_dataset
from cl_detect.engine.config import TrainConfig
from cl_detect.engine.runlog import peak_memory_mb
from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.methods import ContinualModel, TaskContext, create_method

from inference_speed import RESULTS, environment, sync
from train_speed import TableTextEncoder

AQUARIUM = Path("data/aquarium/dataset/aquarium_pretrain")


class StopBenchmark(Exception):
    """Raised from Ultralytics' batch callback once enough batches are timed."""


def copy_aquarium(root: Path) -> Path:
    """Aquarium train (images + labels) and a data.yaml with absolute paths under `root`."""
    source = shared_dir() / AQUARIUM
    if not source.exists():
        raise SystemExit(f"{source} not found: set CL_DETECT_SHARED to the shared folder (see README)")
    for part in ("images", "labels"):
        shutil.copytree(source / "train" / part, root / "train" / part)
    names = yaml.safe_load((source / "data.yaml").read_text())["names"]
    config = {"path": str(root), "train": "train/images", "val": "train/images", "nc": len(names), "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root / "data.yaml"


class BatchClock:
    """Timestamps the end of each batch; images/s over batches (warmup, warmup + count]."""

    def __init__(self, device: torch.device, warmup: int, count: int):
        self.device, self.warmup, self.count = device, warmup, count
        self.times: list[float] = []

    def tick(self) -> bool:
        """Record one batch end; True once the timed batches are done."""
        sync(self.device)
        self.times.append(time.perf_counter())
        return len(self.times) >= self.warmup + self.count

    def images_per_s(self, batch: int) -> float:
        # from the end of batch `warmup` to the end of batch `warmup + count`: `count` batches
        start, end = self.times[self.warmup - 1], self.times[self.warmup + self.count - 1]
        return batch * self.count / (end - start)


def measure_ours(size: str, data_yaml: Path, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dataset = read_dataset(data_yaml, format="yolo", split="train")
    config = TrainConfig(epochs=100, batch_size=args.batch, image_size=args.image_size, num_workers=args.workers,
                         device=args.device, amp=True, warmup_epochs=0, close_mosaic_epochs=0, log_every=10 ** 9)
    detector = create_detector(f"yolo_world_v2_{size}")
    model = ContinualModel(detector, TableTextEncoder(detector.config.text_dim), [create_method("finetune")])
    model.hook("before_task", TaskContext(index=0, name="aquarium", vocabulary=dataset.vocabulary.names))
    train_set, sampler = build_task_training_set(dataset, [], config)
    clock, hook = BatchClock(device, args.warmup, args.batches), model.hook

    def timed_hook(event, *hook_args):
        if event == "after_step":
            clock.tick()
        return hook(event, *hook_args)

    model.hook = timed_hook
    with tempfile.TemporaryDirectory() as out_dir:
        train_one_task(model, train_set, config, out_dir, sampler=sampler, resume=False,
                       stop_after_steps=args.warmup + args.batches)
    return {"trainer": "ours", "images_per_s": clock.images_per_s(args.batch), "peak_memory_mb": peak_memory_mb(device)}


def measure_ultralytics(size: str, data_yaml: Path, args: argparse.Namespace) -> dict:
    os.environ.setdefault("YOLO_VERBOSE", "False")  # read when ultralytics is first imported
    from ultralytics import YOLOWorld
    from ultralytics.models.yolo.world.train import WorldTrainer
    from ultralytics.nn.tasks import WorldModel

    def fixed_text_features(self, text, batch=80, cache_clip_model=False):
        generator = torch.Generator().manual_seed(0)
        features = torch.nn.functional.normalize(torch.randn(1, len(text), 512, generator=generator), dim=-1)
        return features.to(next(self.parameters()).device)

    WorldModel.get_text_pe = fixed_text_features  # no CLIP: a frozen, cached text tower, as ours
    device = torch.device(args.device)
    clock = BatchClock(device, args.warmup, args.batches)

    def on_batch_end(trainer):
        if clock.tick():
            raise StopBenchmark

    model = YOLOWorld(f"yolov8{size}-worldv2.yaml")
    model.add_callback("on_train_batch_end", on_batch_end)
    with tempfile.TemporaryDirectory() as project:
        try:
            model.train(trainer=WorldTrainer, data=str(data_yaml), epochs=100, imgsz=args.image_size,
                        batch=args.batch, workers=args.workers, device=0 if device.type == "cuda" else "cpu",
                        optimizer="AdamW", lr0=2e-4, warmup_epochs=0, close_mosaic=0, amp=device.type == "cuda",
                        val=False, plots=False, project=project, name="run", exist_ok=True, verbose=False)
        except StopBenchmark:
            pass
    return {"trainer": "ultralytics", "images_per_s": clock.images_per_s(args.batch),
            "peak_memory_mb": peak_memory_mb(device)}


def _run(which: str, size: str, data_yaml: Path, args: argparse.Namespace) -> dict:
    return (measure_ultralytics if which == "ultralytics" else measure_ours)(size, data_yaml, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["s"])
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--warmup", type=positive_int, default=5, help="batches before timing starts")
    parser.add_argument("--batches", type=positive_int, default=30, help="timed batches")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ultralytics", action="store_true", help="also run Ultralytics' trainer")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        data_yaml = copy_aquarium(Path(root))
        context = multiprocessing.get_context("spawn")
        for size in args.sizes:
            for which in ["ours"] + (["ultralytics"] if args.ultralytics else []):
                # a fresh, non-daemonic process (its loader starts workers): its own peak memory
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    measured = pool.submit(_run, which, size, data_yaml, args).result()
                row = {"size": size, "batch": args.batch, "image_size": args.image_size, "workers": args.workers,
                       **measured}
                rows.append(row)
                print(f"{size} {row['trainer']:<12} {row['images_per_s']:8.2f} img/s  peak {row['peak_memory_mb']:8.0f} MB",
                      flush=True)
            if args.ultralytics:
                ours, theirs = rows[-2], rows[-1]
                ours["speed_vs_ultralytics"] = ours["images_per_s"] / theirs["images_per_s"]
                print(f"{size} ours / ultralytics: {ours['speed_vs_ultralytics']:.2f}x images/s")
    out = Path(args.out) if args.out else RESULTS / f"trainer_speed_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/trainer_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out.write_text(json.dumps({"benchmark": "trainer_speed", "command": command, **environment(device),
                               "data": "Aquarium train (shared folder), mosaic on", "results": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
