"""`cl-detect analyze`: error analysis of a detections file against its ground truth.

    cl-detect analyze --gt instances_val.json --dets dets.json --out analysis/

Writes size_breakdown.png (AP and missed objects per COCO size bucket),
confusion_matrix.png (ground-truth vs predicted class, with "missed" and
"background") and analysis.json; see `cl_detect.bench.analysis`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="ground truth: any dataset `cl-detect data` reads (COCO json...)")
    parser.add_argument("--dets", required=True,
                        help="detections: COCO results list {image_id, category_id, bbox [x, y, w, h], score}")
    parser.add_argument("--out", required=True, help="folder for the PNG files and analysis.json")
    parser.add_argument("--score-thr", type=float, default=0.3,
                        help="detections below this score are ignored for missed objects and the confusion matrix")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU that pairs a detection with an object")


def run(args: argparse.Namespace) -> int:
    from cl_detect.bench.analysis import analyze, detections_from_coco
    from cl_detect.data.errors import DatasetError
    from cl_detect.data.readers import read_dataset
    try:
        dataset = read_dataset(args.gt)
        try:
            results = json.loads(Path(args.dets).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a bare "Expecting ',' delimiter" named no file
            raise ValueError(f"{args.dets}: not valid JSON ({err}); write the detections file again "
                             f"(was it cut short?)") from None
        if not isinstance(results, list):
            raise ValueError(f"{args.dets}: expected a JSON list of COCO detections, got {type(results).__name__}")
        report = analyze(dataset, detections_from_coco(results, dataset.vocabulary, args.dets), args.out,
                         args.score_thr, args.iou)
    except (DatasetError, ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ap, missed = report["ap"], report["missed_by_size"]
    print(f"AP {ap['all'] * 100:.1f}  " + "  ".join(
        f"{name}: AP {ap[name] * 100:.1f}, missed {m['missed']}/{m['objects']}" for name, m in missed.items()))
    print(f"wrote {args.out}/size_breakdown.png, confusion_matrix.png, analysis.json")
    return 0
