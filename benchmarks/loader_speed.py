"""Training data-loader throughput: images/s for 0/2/8 workers, mosaic on and off.

Runs the full training item (image read, mosaic, affine, HSV, flip, letterbox,
text sampling, collate) on Aquarium train from the shared folder, or on a
synthetic dataset written to a temporary folder when the shared data is absent.
Worker counts above the machine's cores are capped (the cap is recorded).

    python benchmarks/loader_speed.py [--images 256] [--size 640] [--out benchmarks/results/loader_speed_cpu.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cl_detect._shared import shared_dir
from cl_detect.data.loader import TrainDataset, build_train_loader
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.data.sampling import MixingSampler
from cl_detect.data.transforms import AugmentConfig

AQUARIUM = Path("data/aquarium/dataset/aquarium_pretrain")


def load_aquarium(root: Path) -> DetectionDataset:
    """Aquarium train split through the project's YOLO reader."""
    from cl_detect.data.readers import read_dataset

    return read_dataset(root, format="yolo", split="train")


def synthetic_dataset(folder: Path, num_images: int = 64, seed: int = 0) -> DetectionDataset:
    """Random rectangles on noise, 384 x 288 JPEGs (about the size of the packed shared data)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_images):
        image = rng.integers(0, 255, (288, 384, 3), dtype=np.uint8)
        x1, y1 = rng.uniform(0, 300, 6), rng.uniform(0, 200, 6)
        boxes = np.stack([x1, y1, x1 + rng.uniform(10, 80, 6), y1 + rng.uniform(10, 80, 6)], 1)
        path = folder / f"{i}.jpg"
        cv2.imwrite(str(path), image)
        records.append(DetectionRecord(str(path), 384, 288, boxes, rng.integers(0, 5, 6), image_id=i))
    return DetectionDataset(records, Vocabulary(tuple(f"class {c}" for c in range(5))), source=str(folder))


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def images_per_second(dataset: DetectionDataset, mosaic: bool, workers: int, num_images: int, size: int,
                      batch_size: int) -> float:
    """Time `num_images` images through the loader, after one warm-up batch (worker start-up)."""
    train = TrainDataset(dataset, AugmentConfig(image_size=size, mosaic=mosaic))
    sampler = MixingSampler([len(train)], samples_per_epoch=num_images + batch_size, seed=0)
    loader = build_train_loader(train, batch_size=batch_size, num_workers=workers, sampler=sampler,
                                pin_memory=False)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = sum(len(batch["images"]) for batch in iterator)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images timed per setting")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    parser.add_argument("--out", default="benchmarks/results/loader_speed_cpu.json")
    args = parser.parse_args(argv)

    shared = shared_dir()
    temp = None
    if shared is not None and (shared / AQUARIUM).is_dir():
        dataset, data_name = load_aquarium(shared / AQUARIUM), "aquarium train (shared, longer side <= 384 px)"
    else:
        temp = tempfile.TemporaryDirectory()
        dataset, data_name = synthetic_dataset(Path(temp.name)), "synthetic 384x288 JPEGs"
    cores = os.cpu_count() or 1

    rows = []
    for workers_requested in args.workers:
        workers = min(workers_requested, cores)
        for mosaic in (True, False):
            rate = images_per_second(dataset, mosaic, workers, args.images, args.size, args.batch_size)
            rows.append({"workers_requested": workers_requested, "workers": workers, "mosaic": mosaic,
                         "images_per_s": round(rate, 1)})
            print(f"workers {workers} (asked {workers_requested})  mosaic {str(mosaic):5}  {rate:7.1f} images/s")

    result = {
        "benchmark": "loader_speed", "dataset": data_name, "num_dataset_images": len(dataset),
        "image_size": args.size, "batch_size": args.batch_size, "images_timed": args.images,
        "cpu_cores": cores, "device": f"cpu: {cpu_name()}",
        "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": np.__version__, "opencv": cv2.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if temp is not None:
        temp.cleanup()
    return result


if __name__ == "__main__":
    main()
