"""`cl-detect eval`: score a COCO-format detections file and print the statistics as JSON.

    cl-detect eval --gt instances_val2017.json --dets dets.json
    cl-detect eval --gt lvis_v1_minival.json --dets dets.json --lvis --fixed-ap

COCO: pycocotools bbox rules, maxDets [1, 10, 100] unless --max-dets.
LVIS: lvis-api federated rules, 300 detections per image, or Fixed AP
(top 10,000 per category, no per-image cap) with --fixed-ap.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="ground-truth annotation file (COCO or LVIS json)")
    parser.add_argument("--dets", required=True,
                        help="detections: JSON list of {image_id, category_id, bbox [x, y, w, h], score}")
    parser.add_argument("--lvis", action="store_true", help="LVIS federated evaluation (APr/APc/APf)")
    parser.add_argument("--fixed-ap", action="store_true",
                        help="with --lvis: Fixed AP (top 10,000 detections per category, no per-image cap)")
    parser.add_argument("--max-dets", type=int, default=None,
                        help="detections per image (COCO default 100 per category, LVIS default 300)")
    parser.add_argument("--backend", choices=("pycocotools", "fast"), default="pycocotools",
                        help="COCO only: 'fast' is a vectorised evaluator with identical statistics")
    parser.add_argument("--per-category", action="store_true", help="also print AP per category")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")


def _load_detections(path: str):
    """The detections file as `DetectionColumns`; format errors name the file."""
    from cl_detect.eval._detections import to_columns

    detections = json.loads(Path(path).read_text())
    if isinstance(detections, dict) and "annotations" in detections:
        detections = detections["annotations"]
    if not isinstance(detections, list):
        raise ValueError(f"{path}: expected a JSON list of detections (each with image_id, category_id, "
                         f"bbox [x, y, w, h] and score), got {type(detections).__name__}")
    try:
        return to_columns(detections)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def run(args: argparse.Namespace) -> int:
    if args.fixed_ap and not args.lvis:
        print("error: --fixed-ap is an LVIS protocol; add --lvis", file=sys.stderr)
        return 2
    if args.lvis and args.backend != "pycocotools":
        print("error: --backend fast evaluates COCO rules only; drop it for --lvis", file=sys.stderr)
        return 2
    try:
        detections = _load_detections(args.dets)
        if args.lvis:
            from cl_detect.eval.lvis_eval import evaluate_lvis
            stats = evaluate_lvis(args.gt, detections, max_dets=args.max_dets or 300, fixed_ap=args.fixed_ap)
        else:
            from cl_detect.eval.coco_eval import evaluate_coco
            stats = evaluate_coco(args.gt, detections, max_dets=args.max_dets or 100, backend=args.backend)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.per_category:
        stats = {k: v for k, v in stats.items() if not k.startswith("per_category")}
    text = json.dumps(stats, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
