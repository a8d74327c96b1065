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
    from cl_detect.eval.coco_eval import read_json

    detections = read_json(path)
    if isinstance(detections, dict) and "annotations" in detections:
        detections = detections["annotations"]
    if not isinstance(detections, list):
        raise ValueError(f"{path}: expected a JSON list of detections (each with image_id, category_id, "
                         f"bbox [x, y, w, h] and score), got {type(detections).__name__}")
    if detections and isinstance(detections[0], dict) and "boxes" in detections[0]:
        # to_columns would ask for vocabulary=, which the command line cannot pass
        raise ValueError(f"{path}: entry 0 holds per-image boxes and labels (vocabulary indices), which have no "
                         "category ids; write a COCO results list instead: one entry per detection with image_id, "
                         "category_id, bbox [x, y, w, h] and score")
    try:
        return to_columns(detections)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _option_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of options, before any file is read; None when nothing."""
    if args.fixed_ap and not args.lvis:
        return "--fixed-ap is an LVIS protocol; add --lvis"
    if args.lvis and args.backend != "pycocotools":
        return "--backend fast evaluates COCO rules only; drop it for --lvis"
    if args.fixed_ap and args.max_dets is not None:
        return "--fixed-ap has no per-image cap (top 10,000 detections per category); drop --max-dets"
    if args.max_dets is not None and args.max_dets < 1:
        return (f"--max-dets is the number of detections kept per image, got {args.max_dets}; pass a positive "
                "number (COCO: at least 10) or leave it out for the protocol's default")
    return None


def _prepare_out(path: str) -> None:
    """Create the folder of --out now, so a bad path fails before the evaluation rather than after it."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--out {path} is a folder; pass a file name, e.g. {out / 'stats.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {path}: cannot create its folder ({err.strerror}); pass a writable path") from None


def run(args: argparse.Namespace) -> int:
    problem = _option_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.out:
            _prepare_out(args.out)
        detections = _load_detections(args.dets)
        if args.lvis:
            from cl_detect.eval.lvis_eval import evaluate_lvis
            max_dets = args.max_dets if args.max_dets is not None else 300
            stats = evaluate_lvis(args.gt, detections, max_dets=max_dets, fixed_ap=args.fixed_ap)
        else:
            from cl_detect.eval.coco_eval import evaluate_coco
            max_dets = args.max_dets if args.max_dets is not None else 100
            stats = evaluate_coco(args.gt, detections, max_dets=max_dets, backend=args.backend)
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
