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


def _crowd_case(tmp_path):
    """One cat, a crowd region along the bottom, a detection lying inside it and one half out of it."""
    record = DetectionRecord(str(tmp_path / "a.jpg"), 200, 200, [[10, 10, 50, 50]], [0], image_id=1,
                             ignore_boxes=[[0, 120, 200, 200]], ignore_labels=[0])
    dataset = DetectionDataset([record], Vocabulary(("cat", "dog")), source="crowd", image_root=str(tmp_path))
    # IoU with the crowd box is 400 / 16000 for the first detection, but all of it lies inside
    detections = [{"image_id": 1, "boxes": np.array([[10, 130, 30, 150], [150, 100, 170, 130]], np.float32),
                   "scores": np.array([0.9, 0.9], np.float32), "labels": np.array([0, 1])}]
    return dataset, detections


def test_detection_inside_a_crowd_region_is_not_background(tmp_path):
    matrix = confusion_matrix(*_crowd_case(tmp_path))
    # the dog detection has a third of its area in the crowd region: still a background error
    assert matrix[2].tolist() == [0, 1, 0]


def test_unknown_category_ids_are_refused_with_the_file_named(case, tmp_path, capsys):
    dataset, _ = case
    results = [{"image_id": 1, "category_id": 77, "bbox": [0, 0, 20, 20], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9}]
    with pytest.raises(ValueError, match=r"dets\.json: detections reference category_id 77 .*2 categories"):
        detections_from_coco(results, dataset.vocabulary, "dets.json")
    gt_path = write_coco_json(dataset, tmp_path / "gt.json", tmp_path)
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(results))
    assert main(["analyze", "--gt", str(gt_path), "--dets", str(dets_path), "--out", str(tmp_path / "out")]) == 2
    assert f"{dets_path}: detections reference category_id 77" in capsys.readouterr().err
    assert not (tmp_path / "out" / "analysis.json").exists()


def test_missed_and_ap_by_size_bucket_an_object_on_the_same_area(tmp_path):
    """A 40x40 box whose annotated (segmentation) area is 900 is small for AP and for missed objects;
    a box without an annotated area falls back to w*h."""
    record = DetectionRecord(str(tmp_path / "a.jpg"), 200, 200, [[10, 10, 50, 50], [100, 100, 140, 140]], [0, 0],
                             image_id=1, areas=[900.0, float("nan")])
    dataset = DetectionDataset([record], Vocabulary(("cat",)), source="areas", image_root=str(tmp_path))
    missed = missed_by_size(dataset, [])
    assert {k: (v["objects"], v["missed"]) for k, v in missed.items()} == {
        "small": (1, 1), "medium": (1, 1), "large": (0, 0)}
    ap = ap_by_size(dataset, [])
    assert ap["small"] == 0.0 and ap["medium"] == 0.0 and np.isnan(ap["large"])


def test_detections_on_unknown_images_or_with_bad_boxes_are_refused(case, tmp_path):
    dataset, detections = case
    stray = detections + [{"image_id": 42, "boxes": np.array([[0, 0, 9, 9]], np.float32),
                           "scores": np.array([0.9], np.float32), "labels": np.array([0])}]
    with pytest.raises(ValueError, match=r"image_id 42 \(1 unknown image ids in all\).*\(2 images\)"):
        analyze(dataset, stray, tmp_path / "out")
    five_numbers = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20, 1], "score": 0.9}]
    with pytest.raises(ValueError, match=r"dets\.json: COCO results entry 0 has bbox .*not 4 numbers"):
        detections_from_coco(five_numbers, dataset.vocabulary, "dets.json")


def test_a_detections_file_cut_short_is_named(case, tmp_path, capsys):
    # json's bare "Expecting ',' delimiter: line 1 column 49" named no file
    gt_path = write_coco_json(case[0], tmp_path / "gt.json", tmp_path)
    dets_path = tmp_path / "dets.json"
    dets_path.write_text('[{"image_id": 1, "category_id": 1, "bbox": [0, 0')
    assert main(["analyze", "--gt", str(gt_path), "--dets", str(dets_path), "--out", str(tmp_path / "out")]) == 2
    assert f"{dets_path}: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("iou", [0.0, 1.5, float("nan")])
def test_an_iou_threshold_outside_0_1_is_refused(case, tmp_path, iou):
    # at 0 every same-class detection anywhere in the image "found" an object; above 1 nothing did
    with pytest.raises(ValueError, match=r"iou_threshold \(--iou\) .* is outside \(0, 1\]"):
        analyze(*case, tmp_path / "out", iou_threshold=iou)
    with pytest.raises(ValueError, match="outside"):
        missed_by_size(*case, iou_threshold=iou)
    assert not (tmp_path / "out").exists()


def test_a_class_name_holding_nan_survives_in_the_report(tmp_path):
    # NaN was written as null by replacing the text "NaN", which also turned "NaN bread" into "null bread"
    record = DetectionRecord(str(tmp_path / "a.jpg"), 200, 200, [[0, 0, 20, 20]], [0], image_id=1)
    dataset = DetectionDataset([record], Vocabulary(("NaN bread", "dog")), source="nan", image_root=str(tmp_path))
    analyze(dataset, [], tmp_path / "out")
    report = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert report["confusion_rows"][0] == "NaN bread" and report["ap"]["large"] is None
    assert report["missed_by_size"]["large"]["missed_fraction"] is None
