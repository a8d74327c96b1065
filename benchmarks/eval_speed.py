"""COCO bbox evaluation time: raw pycocotools vs cl_detect's fast backend.

Builds a COCO-val-sized synthetic set (5,000 images, ~7 ground-truth boxes
each over the 80 COCO category ids, ~1% crowd; 300 detections per image, half
jittered copies of ground truth, half random), scores it with raw pycocotools
(loadRes + evaluate + accumulate + summarize) and with
`evaluate_coco(..., backend="fast")` from the same results list, checks that
the statistics and the precision/recall arrays are identical, prints the
ratio and writes benchmarks/results/eval_speed_cpu.json.

    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py [--images 5000] [--dets 300]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import platform
import time
from pathlib import Path

import numpy as np

COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
SIZES = np.array([8.0, 16.0, 32.0, 64.0, 128.0, 256.0])


def synthetic_coco(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """Ground-truth dict and results list with COCO val's scale."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_index in range(num_images):
        image_id = 100_000 + image_index
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        n_gt = rng.poisson(7)
        wh = rng.choice(SIZES, size=(n_gt, 2)) * rng.uniform(0.6, 1.4, size=(n_gt, 2))
        xy = rng.uniform(0, 400, size=(n_gt, 2))
        cats = rng.choice(COCO_IDS, size=n_gt)
        for k in range(n_gt):
            box = [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cats[k]),
                                "bbox": box, "area": box[2] * box[3] * float(rng.uniform(0.5, 0.9)),
                                "iscrowd": int(rng.random() < 0.01)})
        boxes, det_cats = _detections_for_image(rng, xy, wh, cats, dets_per_image)
        scores = rng.random(dets_per_image)
        for box, cat, score in zip(boxes.tolist(), det_cats.tolist(), scores.tolist()):
            detections.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in COCO_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _detections_for_image(rng: np.random.Generator, xy: np.ndarray, wh: np.ndarray, cats: np.ndarray,
                          count: int) -> tuple[np.ndarray, np.ndarray]:
    """Half jittered ground-truth copies (80% with the right class), half random boxes."""
    n_copy = count // 2 if len(cats) else 0
    src = rng.integers(0, max(len(cats), 1), size=n_copy)
    size = np.concatenate([wh[src], wh[src]], axis=1)
    copies = np.concatenate([xy[src], wh[src]], axis=1) + rng.normal(0, 0.15, size=(n_copy, 4)) * size
    random = np.concatenate([rng.uniform(0, 400, size=(count - n_copy, 2)),
                             rng.choice(SIZES, size=(count - n_copy, 2))], axis=1)
    boxes = np.concatenate([copies, random])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
    det_cats = rng.choice(COCO_IDS, size=count)
    det_cats[:n_copy] = np.where(rng.random(n_copy) < 0.8, cats[src], det_cats[:n_copy])
    return boxes, det_cats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_speed_cpu.json"))
    args = parser.parse_args()

    import pycocotools
    from pycocotools.cocoeval import COCOeval

    from cl_detect.eval.coco_eval import evaluate_coco, load_coco_gt

    gt, detections = synthetic_coco(args.images, args.dets)
    coco_gt = load_coco_gt(gt)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} boxes, {len(detections)} detections")

    raw_input = copy.deepcopy(detections)  # loadRes mutates its input; the copy is not timed
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(raw_input), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    raw_seconds = time.perf_counter() - start
    print(f"pycocotools: {raw_seconds:.1f} s")

    start = time.perf_counter()
    fast = evaluate_coco(coco_gt, detections, backend="fast")
    fast_seconds = time.perf_counter() - start
    print(f"fast backend: {fast_seconds:.1f} s")

    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    diff = float(np.max(np.abs(np.array([fast[k] for k in names]) - evaluator.stats)))
    ratio = raw_seconds / fast_seconds
    print(f"speed-up {ratio:.1f}x, max |stat difference| {diff:.3g}")

    result = {
        "benchmark": "coco bbox evaluation, raw pycocotools vs cl_detect fast backend",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": {"kind": "cpu", "processor": _cpu_name(), "machine": platform.machine(),
                   "omp_num_threads": __import__("os").environ.get("OMP_NUM_THREADS")},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "pycocotools": getattr(pycocotools, "__version__", _dist_version("pycocotools"))},
        "setup": {"images": len(gt["images"]), "gt_boxes": len(gt["annotations"]), "detections": len(detections),
                  "max_dets": 100, "timed": "from a loaded GT COCO object and a results list to the statistics"},
        "pycocotools_seconds": raw_seconds,
        "fast_seconds": fast_seconds,
        "speedup": ratio,
        "max_abs_stat_diff": diff,
        "stats_identical": diff == 0.0,
        "stats": {k: fast[k] for k in names},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _dist_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    main()
