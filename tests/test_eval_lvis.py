"""LVIS evaluator parity with the lvis-api (300 dets/image and Fixed AP) and the Fixed AP cap."""
import copy
import json

import numpy as np
import pytest

from cl_detect.data.records import Vocabulary
from cl_detect.eval._detections import to_columns
from cl_detect.eval.lvis_eval import cap_detections_per_category, evaluate_lvis, lvis_numpy_compat

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


@pytest.fixture(scope="module")
def lvis_val(shared_data):
    return str(shared_data / "lvis_val_100" / "data" / "lvis_val_100.json")


def federated_detections(dataset: dict, seed: int = 0) -> list[dict]:
    """Jittered GT boxes, false positives on neg_category_ids, and 320 low-score boxes per 10th image."""
    rng = np.random.default_rng(seed)
    detections = []
    for ann in dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        j = rng.normal(0, 0.1, 4) * [w, h, w, h]
        detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": float(rng.random()),
                           "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)]})
    used = sorted({a["category_id"] for a in dataset["annotations"]})
    for index, image in enumerate(dataset["images"]):
        for cat in image["neg_category_ids"][:4]:
            detections.append({"image_id": image["id"], "category_id": cat, "score": float(rng.random()),
                               "bbox": [*rng.uniform(0, 300, 2), *rng.uniform(5, 200, 2)]})
        # beyond 300 per image, so the per-image cap and Fixed AP differ
        for _ in range(320 if index % 10 == 0 else 5):
            detections.append({"image_id": image["id"], "category_id": int(rng.choice(used)),
                               "score": float(rng.random() * 0.6),
                               "bbox": [*rng.uniform(0, 300, 2), *rng.uniform(5, 200, 2)]})
    return detections


def raw_lvis(gt_path: str, detections: list[dict], max_dets: int):
    from lvis import LVIS, LVISEval, LVISResults

    with lvis_numpy_compat():  # lvis 0.5.3 needs np.float, gone from NumPy >= 1.24
        gt = LVIS(gt_path)
        evaluator = LVISEval(gt, LVISResults(gt, copy.deepcopy(detections), max_dets=max_dets), "bbox")
        evaluator.params.max_dets = max_dets
        evaluator.run()
    return evaluator


def test_lvis_300_dets_matches_raw_lvis_api(lvis_val):
    detections = federated_detections(json.load(open(lvis_val)))
    raw = raw_lvis(lvis_val, detections, 300)
    ours = evaluate_lvis(lvis_val, detections)
    assert ours["protocol"] == "lvis-300dets"
    assert 0.05 < ours["AP"] < 0.95
    for name in STAT_NAMES:
        assert abs(ours[name] - raw.results[name]) <= 1e-12, name
    assert abs(ours["AR"] - raw.results["AR@300"]) <= 1e-12
    precision = raw.eval["precision"]
    k = raw.params.cat_ids.index(3)
    values = precision[:, :, k, 0]
    assert ours["per_category_ap_by_id"][3] == (np.mean(values[values > -1]) if np.any(values > -1) else -1.0)


def test_fixed_ap_matches_lvis_api_on_capped_detections(lvis_val):
    detections = federated_detections(json.load(open(lvis_val)))
    ours = evaluate_lvis(lvis_val, detections, fixed_ap=True, dets_per_category=40)
    # an independent cap: per category, the 40 highest scores (ties by input order)
    by_category = {}
    for index, det in enumerate(detections):
        by_category.setdefault(det["category_id"], []).append((-det["score"], index))
    kept = sorted(index for entries in by_category.values() for _, index in sorted(entries)[:40])
    raw = raw_lvis(lvis_val, [detections[i] for i in kept], -1)
    assert ours["protocol"] == "fixed-ap-40"
    assert ours["num_detections"] == len(kept) < len(detections)
    for name in STAT_NAMES:
        assert abs(ours[name] - raw.results[name]) <= 1e-12, name
    default = evaluate_lvis(lvis_val, detections, fixed_ap=True)
    assert default["protocol"] == "fixed-ap-10000" and default["num_detections"] == len(detections)
    assert default["AP"] != evaluate_lvis(lvis_val, detections)["AP"]  # no per-image cap under Fixed AP


def test_cap_keeps_top_scores_per_category_in_input_order():
    columns = to_columns([
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.1},
        {"image_id": 2, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 0.3},
        {"image_id": 3, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.7},
        {"image_id": 4, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.7},
    ])
    kept = cap_detections_per_category(columns, limit=2)
    # category 5: 0.9 and the first of the tied 0.7s; category 7 untouched
    assert kept.image_ids.tolist() == [2, 1, 3]
    assert kept.scores.tolist() == [0.9, 0.3, 0.7]


def hand_made_lvis() -> dict:
    """One image, one 'cup' box (category 1); 'dog' (2) is verified absent from the image."""
    return {
        "images": [{"id": 10, "width": 100, "height": 100, "neg_category_ids": [2], "not_exhaustive_category_ids": []}],
        "categories": [{"id": 1, "name": "cup", "frequency": "f"}, {"id": 2, "name": "dog", "frequency": "r"}],
        "annotations": [{"id": 1, "image_id": 10, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600.0}],
    }


def test_fixed_ap_and_per_image_cap_on_hand_made_case():
    gt = hand_made_lvis()
    false_cups = [{"image_id": 10, "category_id": 1, "bbox": [60, 60, 5, 5], "score": s} for s in (0.9, 0.8)]
    dogs = [{"image_id": 10, "category_id": 2, "bbox": [0, 0, 9, 9], "score": 0.95} for _ in range(400)]
    true_cup = [{"image_id": 10, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.5}]
    detections = false_cups + dogs + true_cup
    # 300 per image: the 400 dogs and 2 false cups outrank the true cup, which is cut -> AP 0
    assert evaluate_lvis(gt, detections)["AP"] == 0.0
    # Fixed AP keeps it: the cup ranks 3rd, precision 1/3 at every recall level -> AP 1/3
    fixed = evaluate_lvis(gt, detections, fixed_ap=True)
    assert abs(fixed["AP"] - 1 / 3) < 1e-12 and abs(fixed["APf"] - 1 / 3) < 1e-12
    assert fixed["APr"] == -1.0  # 'dog' has no ground truth: excluded, reported as -1
    # a cap of 2 per category drops the true cup again
    assert evaluate_lvis(gt, detections, fixed_ap=True, dets_per_category=2)["AP"] == 0.0


@pytest.mark.parametrize("options, message", [({"max_dets": 0}, "max_dets .* got 0"), ({"max_dets": -1}, "got -1"),
                                              ({"fixed_ap": True, "dets_per_category": 0}, "dets_per_category")])
def test_caps_that_are_not_positive_are_refused(options, message):
    # max_dets=0 made the lvis-api index an empty list (IndexError); -1 scored with no per-image cap
    detections = [{"image_id": 10, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.5}]
    with pytest.raises(ValueError, match=message):
        evaluate_lvis(hand_made_lvis(), detections, **options)


def test_per_image_arrays_and_empty_detections():
    gt = hand_made_lvis()
    vocabulary = Vocabulary(names=("cup", "dog"), category_ids=(1, 2))
    per_image = [{"image_id": 10, "boxes": np.array([[10.0, 10.0, 50.0, 50.0]]), "scores": [0.5], "labels": [0]}]
    # one true positive: precision tp / (tp + fp + eps), i.e. 1 less one ulp
    assert evaluate_lvis(gt, per_image, vocabulary=vocabulary)["AP"] == pytest.approx(1.0, abs=1e-12)
    assert evaluate_lvis(gt, [])["AP"] == 0.0
    with pytest.raises(ValueError, match="category_id 3"):
        evaluate_lvis(gt, [{"image_id": 10, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_coco_ground_truth_is_not_lvis(shared_data):
    coco_val = shared_data / "tiny_coco" / "tiny_coco" / "annotations" / "instances_val2017.json"
    image_id = json.load(open(coco_val))["images"][0]["id"]
    detections = [{"image_id": image_id, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match=r"instances_val2017.json: not an LVIS annotation file.*drop --lvis"):
        evaluate_lvis(str(coco_val), detections)


@pytest.mark.parametrize("part, key", [("images", "not_exhaustive_category_ids"), ("categories", "frequency"),
                                       ("annotations", "area")])
def test_lvis_ground_truth_missing_key_is_named(part, key):
    gt = hand_made_lvis()
    del gt[part][-1][key]
    index = len(gt[part]) - 1
    with pytest.raises(ValueError, match=rf"the ground-truth dict: {part}\[{index}\] .*has no '{key}'.*add it"):
        evaluate_lvis(gt, [])


@pytest.mark.parametrize("bad_bbox", [[10, 10, 40, 40, 1], [10, 10]])
def test_lvis_bbox_that_is_not_4_numbers_is_named(bad_bbox):
    detections = [{"image_id": 10, "category_id": 1, "bbox": bad_bbox, "score": 0.5}] * 4
    with pytest.raises(ValueError, match="entry 0 has bbox .*not 4 numbers"):
        evaluate_lvis(hand_made_lvis(), detections)


def test_image_ids_score_a_subset_of_the_file_only():
    gt = hand_made_lvis()
    gt["images"].append({**gt["images"][0], "id": 11})
    gt["annotations"].append({**gt["annotations"][0], "id": 2, "image_id": 11})
    found = [{"image_id": 10, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.5}]
    # the whole file: image 11's cup is missed -> recall 1/2
    assert evaluate_lvis(gt, found)["AP"] == pytest.approx(0.5, abs=0.01)
    assert evaluate_lvis(gt, found, image_ids=[10])["AP"] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="image_ids has 1 image id.*first: 12"):
        evaluate_lvis(gt, found, image_ids=[10, 12])


def test_detector_on_an_lvis_subset_scores_its_images_only(tmp_path, monkeypatch):
    """An image_list / max_images subset of an LVIS json used to count the left-out images as missed."""
    import dataclasses

    import cv2
    import torch

    import cl_detect.eval.detector_eval as detector_eval
    from cl_detect.data.readers import read_dataset

    gt = hand_made_lvis()
    gt["images"] = [{**gt["images"][0], "id": i, "file_name": f"{i}.jpg"} for i in (10, 11, 12, 13)]
    gt["annotations"] = [{**gt["annotations"][0], "id": i, "image_id": i} for i in (10, 11, 12, 13)]
    for image in gt["images"]:
        cv2.imwrite(str(tmp_path / image["file_name"]), np.zeros((100, 100, 3), np.uint8))
    (tmp_path / "lvis.json").write_text(json.dumps(gt))
    dataset = read_dataset(tmp_path / "lvis.json")

    def perfect_detector(detector, embeddings, dataset, *args, **kwargs):  # the ground truth, score 1
        return [{"image_id": r.image_id, "boxes": r.boxes.astype(np.float64), "scores": np.ones(len(r.boxes)),
                 "labels": r.labels} for r in dataset.records]

    monkeypatch.setattr(detector_eval, "run_detector", perfect_detector)
    subset = dataclasses.replace(dataset, records=dataset.records[:2])
    for protocol in ("lvis", "lvis-fixed"):
        stats = detector_eval.evaluate_detector(None, lambda names: torch.zeros(len(names), 4), subset,
                                                protocol=protocol)
        assert stats["AP"] == pytest.approx(1.0, abs=1e-12), protocol
