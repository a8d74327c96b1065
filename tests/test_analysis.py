"""Error analysis on a hand-made case: size buckets, missed objects, confusion matrix."""
import json

import numpy as np
import pytest

from cl_detect.bench.analysis import (analyze, ap_by_size, confusion_matrix, detections_from_coco, missed_by_size,
                                      size_bucket)
from cl_detect.cli import main
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.data.writers import write_coco_json


@pytest.fixture
def case(tmp_path):
    """Image 1: small cat (found), medium dog (seen as cat), large cat (missed), one background dog.
    Image 2: large dog (found)."""
    records = [
        DetectionRecord(str(tmp_path / "a.jpg"), 200, 200, [[0, 0, 20, 20], [50, 50, 100, 100], [0, 100, 120, 200]],
                        [0, 1, 0], image_id=1),
        DetectionRecord(str(tmp_path / "b.jpg"), 200, 200, [[0, 0, 150, 150]], [1], image_id=2),
    ]
    dataset = DetectionDataset(records, Vocabulary(("cat", "dog")), source="case", image_root=str(tmp_path))
    detections = [
        {"image_id": 1, "boxes": np.array([[0, 0, 20, 20], [50, 50, 100, 100], [150, 0, 190, 40], [0, 100, 120, 200]],
                                          np.float32),
         "scores": np.array([0.9, 0.8, 0.7, 0.1], np.float32), "labels": np.array([0, 0, 1, 0])},
        {"image_id": 2, "boxes": np.array([[0, 0, 150, 150]], np.float32), "scores": np.array([0.95], np.float32),
         "labels": np.array([1])},
    ]
    return dataset, detections


def test_size_buckets_follow_coco_areas():
    boxes = np.array([[0, 0, 31, 31], [0, 0, 32, 32], [0, 0, 95, 96], [0, 0, 96, 96], [0, 0, 97, 97]], np.float32)
    assert size_bucket(boxes).tolist() == [0, 1, 1, 2, 2]


def test_missed_by_size(case):
    missed = missed_by_size(*case, score_threshold=0.3)
    assert {k: (v["objects"], v["missed"]) for k, v in missed.items()} == {
        "small": (1, 0), "medium": (1, 1), "large": (2, 1)}
    # with the threshold at 0.05 the low-score detection finds the large cat
    assert missed_by_size(*case, score_threshold=0.05)["large"]["missed"] == 0


def test_confusion_matrix(case):
    matrix = confusion_matrix(*case, score_threshold=0.3)
    # rows: cat, dog, background; columns: cat, dog, missed
    assert matrix.tolist() == [[1, 0, 1],
                               [1, 1, 0],
                               [0, 1, 0]]


def test_ap_by_size(case):
    ap = ap_by_size(*case)
    assert ap["small"] == pytest.approx(1.0)  # the only small object, found by the top cat detection
    assert ap["medium"] == pytest.approx(0.0)  # the medium dog has no dog detection
    assert 0 < ap["all"] < 1


def test_analyze_cli_writes_pngs(case, tmp_path):
    dataset, detections = case
    gt_path = write_coco_json(dataset, tmp_path / "gt.json", tmp_path)
    coco_results = [{"image_id": d["image_id"], "category_id": int(label) + 1, "score": float(score),
                     "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
                    for d in detections for box, score, label in zip(d["boxes"], d["scores"], d["labels"])]
    converted = detections_from_coco(coco_results, dataset.vocabulary)
    assert np.allclose(converted[0]["boxes"], detections[0]["boxes"])
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(coco_results))
    out = tmp_path / "analysis"
    assert main(["analyze", "--gt", str(gt_path), "--dets", str(dets_path), "--out", str(out)]) == 0
    for name in ("size_breakdown.png", "confusion_matrix.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and (out / name).stat().st_size > 1000
    report = json.loads((out / "analysis.json").read_text())
    assert report["confusion_matrix"] == confusion_matrix(dataset, detections).tolist()


def test_analyze_returns_report(case, tmp_path):
    report = analyze(*case, tmp_path / "out")
    assert report["confusion_columns"][-1] == "missed" and report["confusion_rows"][-1] == "background"
