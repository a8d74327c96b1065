"""COCO evaluator parity: cl_detect (both backends) vs raw pycocotools, input forms, errors."""
import contextlib
import copy
import io
import json
import re

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cl_detect.cli import main
from cl_detect.data.records import Vocabulary
from cl_detect.eval._detections import to_columns
from cl_detect.eval.coco_eval import coco_params, evaluate_coco, load_coco_gt, run_pycocotools
from cl_detect.eval.fast_coco import evaluate_bbox

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@pytest.fixture(scope="module")
def coco_val(shared_data):
    return str(shared_data / "tiny_coco" / "tiny_coco" / "annotations" / "instances_val2017.json")


def jittered_detections(dataset: dict, seed: int = 0) -> list[dict]:
    """GT boxes jittered (3 per box, 10% wrong class), plus 15 random false positives per image."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in dataset["categories"]]
    detections = []
    for ann in dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(3):
            j = rng.normal(0, 0.1, 4) * [w, h, w, h]
            cat = ann["category_id"] if rng.random() < 0.9 else int(rng.choice(cat_ids))
            detections.append({"image_id": ann["image_id"], "category_id": cat, "score": float(rng.random()),
                               "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)]})
    for image in dataset["images"]:
        for _ in range(15):
            detections.append({"image_id": image["id"], "category_id": int(rng.choice(cat_ids)),
                               "score": float(rng.random()),
                               "bbox": [*rng.uniform(0, 300, 2), *rng.uniform(4, 250, 2)]})
    return detections


def raw_pycocotools(gt_path: str, detections: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_tiny_coco_val_matches_raw_pycocotools(coco_val, backend):
    dataset = json.load(open(coco_val))
    detections = jittered_detections(dataset)
    raw = raw_pycocotools(coco_val, detections)
    ours = evaluate_coco(coco_val, detections, backend=backend)
    assert ours["protocol"] == "coco-100dets"
    assert 0.05 < ours["AP"] < 0.95  # a meaningful, non-degenerate score
    np.testing.assert_allclose([ours[k] for k in STAT_NAMES], raw.stats, rtol=0, atol=1e-12)
    # per-category AP from the same precision array, -1 for the categories without GT in val
    precision = raw.eval["precision"]
    for k, cat_id in enumerate(raw.params.catIds):
        values = precision[:, :, k, 0, -1]
        expected = np.mean(values[values > -1]) if np.any(values > -1) else -1.0
        assert abs(ours["per_category_ap_by_id"][cat_id] - expected) <= 1e-12
    assert ours["per_category_ap"]["person"] == ours["per_category_ap_by_id"][1]
    assert sum(v == -1.0 for v in ours["per_category_ap_by_id"].values()) == 80 - 48


def random_crowd_set(seed: int, num_images: int = 40, num_cats: int = 5):
    """Random GT with crowd boxes, duplicate boxes (IoU ties), an annotation id 0, coarse (tied) scores."""
    rng = np.random.default_rng(seed)
    images = [{"id": 7 * i + 3} for i in range(num_images)]
    cats = [{"id": 2 * c + 1, "name": f"c{c}"} for c in range(num_cats)]
    anns = []
    for image in images:
        for _ in range(rng.poisson(6)):
            w, h = rng.choice([5.0, 20.0, 50.0, 150.0]) * rng.uniform(0.5, 1.5, 2)
            box = [float(v) for v in (*rng.uniform(0, 300, 2), w, h)]
            anns.append({"id": len(anns), "image_id": image["id"], "category_id": int(rng.choice(cats)["id"]),
                         "bbox": box, "area": box[2] * box[3] * float(rng.uniform(0.4, 1.0)),
                         "iscrowd": int(rng.random() < 0.1)})
            if rng.random() < 0.1:
                anns.append({**anns[-1], "id": len(anns), "iscrowd": 0})
    detections = []
    for image in images:
        own = [a for a in anns if a["image_id"] == image["id"]]
        for _ in range(120):
            if own and rng.random() < 0.5:
                ann = own[rng.integers(len(own))]
                x, y, w, h = ann["bbox"]
                box = [x, y, w, h] if rng.random() < 0.1 else [
                    x + rng.normal(0, 0.15) * w, y + rng.normal(0, 0.15) * h,
                    max(w * rng.uniform(0.7, 1.3), 0.5), max(h * rng.uniform(0.7, 1.3), 0.5)]
                cat = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(cats)["id"])
            else:
                box = [*rng.uniform(0, 300, 2), *(rng.choice([5.0, 20.0, 50.0, 150.0]) * rng.uniform(0.5, 1.5, 2))]
                cat = int(rng.choice(cats)["id"])
            detections.append({"image_id": image["id"], "category_id": cat, "bbox": [float(v) for v in box],
                               "score": float(np.round(rng.random(), 2))})
    return {"images": images, "categories": cats, "annotations": anns}, detections


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_dets", [10, 100])
def test_fast_backend_arrays_identical_on_random_sets_with_crowd(seed, max_dets):
    gt, detections = random_crowd_set(seed)
    assert any(a["iscrowd"] for a in gt["annotations"])
    coco = load_coco_gt(gt)
    params = coco_params(coco, max_dets)
    columns = to_columns(detections)
    ref_precision, ref_recall = run_pycocotools(coco, columns, params)
    precision, recall = evaluate_bbox(coco, columns, params)
    assert (ref_precision > -1).sum() > 1000
    assert np.abs(precision - ref_precision).max() <= 1e-12
    assert np.abs(recall - ref_recall).max() <= 1e-12


def test_per_image_arrays_equal_results_list(coco_val):
    dataset = json.load(open(coco_val))
    vocabulary = Vocabulary(names=tuple(c["name"] for c in dataset["categories"]),
                            category_ids=tuple(c["id"] for c in dataset["categories"]))
    label_of = vocabulary.index_of_category_id()
    rng = np.random.default_rng(3)
    per_image, results = [], []
    for image in dataset["images"]:
        anns = [a for a in dataset["annotations"] if a["image_id"] == image["id"]]
        gt_xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        corner = rng.uniform(0, 400, (10, 2))
        xyxy = np.concatenate([gt_xyxy + rng.normal(0, 3, gt_xyxy.shape),
                               np.concatenate([corner, corner + rng.uniform(2, 200, (10, 2))], axis=1)])
        xyxy = xyxy.astype(np.float32)  # detector output dtype; converted in float64 on both paths
        labels = np.array([label_of[a["category_id"]] for a in anns] + list(rng.integers(0, 80, 10)))
        scores = rng.random(len(labels)).astype(np.float32)
        per_image.append({"image_id": image["id"], "boxes": xyxy, "scores": scores, "labels": labels})
        for box, score, label in zip(xyxy, scores, labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": image["id"], "category_id": vocabulary.category_ids[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    from_arrays = evaluate_coco(coco_val, per_image, vocabulary=vocabulary)
    from_list = evaluate_coco(coco_val, results)
    assert from_arrays["num_detections"] == len(dataset["annotations"]) + 50 * 10
    assert from_arrays == from_list
    assert from_arrays["AP50"] > 0.3  # labels really were mapped to the right category ids


def test_empty_detections_score_zero(coco_val):
    for backend in ("pycocotools", "fast"):
        stats = evaluate_coco(coco_val, [], backend=backend)
        assert stats["AP"] == 0.0 and stats["AR100"] == 0.0, backend


def test_unknown_ids_are_named(coco_val):
    with pytest.raises(ValueError, match="image_id 123456789"):
        evaluate_coco(coco_val, [{"image_id": 123456789, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])
    image_id = json.load(open(coco_val))["images"][0]["id"]
    with pytest.raises(ValueError, match="category_id 0 .*vocabulary="):
        evaluate_coco(coco_val, [{"image_id": image_id, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 0.5}])
    with pytest.raises(ValueError, match="vocabulary="):
        evaluate_coco(coco_val, [{"image_id": image_id, "boxes": np.zeros((1, 4)), "scores": [1.0], "labels": [0]}])


def test_cli_eval_prints_json(coco_val, tmp_path, capsys):
    dataset = json.load(open(coco_val))
    detections = jittered_detections(dataset, seed=1)
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(detections))
    assert main(["eval", "--gt", coco_val, "--dets", str(dets_path), "--backend", "fast"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["backend"] == "fast" and "per_category_ap" not in printed
    assert abs(printed["AP"] - raw_pycocotools(coco_val, detections).stats[0]) <= 1e-12
    assert main(["eval", "--gt", coco_val, "--dets", str(dets_path), "--fixed-ap"]) == 2


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
@pytest.mark.parametrize("bad_bbox", [[1.0, 2.0, 3.0, 4.0, 0.0], [1.0, 2.0], [1.0, 2.0, 3.0, None], None],
                         ids=["5_values", "2_values", "none_value", "no_list"])
def test_bbox_that_is_not_4_numbers_is_named(coco_val, backend, bad_bbox):
    image_id = json.load(open(coco_val))["images"][0]["id"]
    good = {"image_id": image_id, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5}
    # all bad and equally long would reshape into other boxes; one bad among good ones would not stack
    for detections, index in (([dict(good, bbox=bad_bbox)] * 4, 0), ([good, good, dict(good, bbox=bad_bbox)], 2)):
        with pytest.raises(ValueError, match=rf"entry {index} has bbox .*not 4 numbers.*\[x, y, width, height\]"):
            evaluate_coco(coco_val, detections, backend=backend)


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_non_finite_boxes_are_refused(coco_val, backend):
    # pycocotools matched an all-NaN box to ground truth (AP 1.0) while fast scored it 0.0
    dataset = json.load(open(coco_val))
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": [float("nan")] * 4,
                   "score": 0.9} for a in dataset["annotations"] if not a["iscrowd"]]
    with pytest.raises(ValueError, match=rf"{len(detections)} box\(es\) with non-finite coordinates.*first: "
                                         rf"detection 0, image_id {detections[0]['image_id']}"):
        evaluate_coco(coco_val, detections, backend=backend)
    one_inf = [dict(detections[0], bbox=[0.0, 0.0, float("inf"), 5.0])]
    with pytest.raises(ValueError, match="1 box\\(es\\) with non-finite"):
        evaluate_coco(coco_val, one_inf, backend=backend)


def test_per_image_boxes_must_be_n_by_4(coco_val):
    image_id = json.load(open(coco_val))["images"][0]["id"]
    vocabulary = Vocabulary(names=("person",), category_ids=(1,))
    with pytest.raises(ValueError, match=rf"image {image_id}: boxes have shape \(4, 5\)"):
        evaluate_coco(coco_val, [{"image_id": image_id, "boxes": np.zeros((4, 5)), "scores": np.ones(5),
                                  "labels": np.zeros(5, np.int64)}], vocabulary=vocabulary)


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
@pytest.mark.parametrize("key", ["area", "iscrowd"])
def test_ground_truth_without_area_or_iscrowd_is_named(coco_val, tmp_path, backend, key):
    # pycocotools raises a bare KeyError on these; both backends name the file and the record instead
    dataset = json.load(open(coco_val))
    first = dataset["annotations"][3]
    for annotation in dataset["annotations"][3:]:
        del annotation[key]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(dataset))
    detections = [{"image_id": first["image_id"], "category_id": first["category_id"], "bbox": first["bbox"],
                   "score": 0.9}]
    lacking = len(dataset["annotations"]) - 3
    with pytest.raises(ValueError, match=rf"gt.json: annotations\[3\] \(id {first['id']}\) has no '{key}' "
                                         rf"\({lacking} of .*add it.*{key}"):
        evaluate_coco(str(gt_path), detections, backend=backend)
    with pytest.raises(ValueError, match="the ground-truth dict: annotations"):
        evaluate_coco(dataset, detections, backend=backend)


def test_cli_eval_names_bad_files(coco_val, tmp_path, capsys):
    dataset = json.load(open(coco_val))
    annotation = dataset["annotations"][0]
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps([{"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                                      "bbox": annotation["bbox"] + [0.0], "score": 0.9}]))
    assert main(["eval", "--gt", coco_val, "--dets", str(dets_path), "--backend", "fast"]) == 2
    assert f"{dets_path}: COCO results entry 0 has bbox" in capsys.readouterr().err
    good_path = tmp_path / "good.json"
    good_path.write_text(json.dumps([{"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                                      "bbox": annotation["bbox"], "score": 0.9}]))
    assert main(["eval", "--gt", coco_val, "--dets", str(good_path), "--lvis"]) == 2
    assert f"{coco_val}: not an LVIS annotation file" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--max-dets", "0"], ["--max-dets", "-1"], ["--max-dets", "0", "--lvis"],
                                   ["--max-dets", "300", "--lvis", "--fixed-ap"]],
                         ids=["zero", "negative", "lvis_zero", "fixed_ap"])
def test_cli_eval_refuses_max_dets_it_would_not_use(coco_val, tmp_path, capsys, extra):
    # 0 used to be read as "not given" and silently became the default
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(jittered_detections(json.load(open(coco_val)))))
    assert main(["eval", "--gt", coco_val, "--dets", str(dets_path), *extra]) == 2
    captured = capsys.readouterr()
    assert "--max-dets" in captured.err and captured.out == ""


def test_cli_eval_out_creates_its_folder_and_refuses_a_folder(coco_val, tmp_path, capsys):
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(jittered_detections(json.load(open(coco_val)))))
    out = tmp_path / "new" / "deeper" / "stats.json"
    assert main(["eval", "--gt", coco_val, "--dets", str(dets_path), "--backend", "fast", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)
    assert main(["eval", "--gt", coco_val, "--dets", str(dets_path), "--out", str(tmp_path / "new")]) == 2
    captured = capsys.readouterr()
    assert f"--out {tmp_path / 'new'} is a folder" in captured.err and captured.out == ""


def two_image_gt() -> dict:
    return {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400,
                             "iscrowd": 0}]}


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
@pytest.mark.parametrize("part, index, key, value, message", [
    # pycocotools looks annotations up by id: it scored the second box twice, the fast backend each once
    ("annotations", 1, "id", 1, r"annotation id 1 is used by annotations \[0, 1\].*renumber"),
    ("annotations", 0, "bbox", [10, 10, float("nan"), 50], r"annotations\[0\] \(id 1\) has bbox .*not 4 finite"),
    ("annotations", 0, "bbox", [10, 10, 50], r"annotations\[0\] \(id 1\) has bbox .*not 4 finite"),
    ("annotations", 0, "area", None, r"annotations\[0\] \(id 1\) has area None, not a finite number"),
    ("annotations", 0, "iscrowd", 256, r"annotations\[0\] \(id 1\) has iscrowd 256, not 0 or 1"),
    ("images", 0, "id", "img1", r"images\[0\] has id 'img1', not an integer id.*renumber"),
    # both backends merged the two images' annotations into one image
    ("images", 1, "id", 1, r"image id 1 is used by images \[0, 1\].*merge.*its own id"),
    ("images", 0, "id", 2 ** 64 + 1, r"images\[0\] has id 18446744073709551617, not an integer id"),
])
def test_ground_truth_values_the_backends_would_misread_are_named(backend, part, index, key, value, message):
    gt = two_image_gt()
    gt[part][index][key] = value
    detections = [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.5}]
    with pytest.raises(ValueError, match=rf"the ground-truth dict: .*{message}"):
        evaluate_coco(gt, detections, backend=backend)


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
@pytest.mark.parametrize("key, value", [("image_id", 1.5), ("image_id", "1"), ("category_id", 1.5),
                                        ("image_id", 2 ** 64)])
def test_detection_ids_that_are_not_integers_are_named(backend, key, value):
    # 1.5 used to be truncated to image 1 and "1" parsed: scored as a detection pycocotools would refuse
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}] * 2
    detections = [detections[0], {**detections[1], key: value}]
    with pytest.raises(ValueError, match=rf"entry 1 has {key} .*not an integer id"):
        evaluate_coco(two_image_gt(), detections, backend=backend)
    per_image = [{"image_id": 1.5, "boxes": np.zeros((0, 4)), "scores": [], "labels": []}]
    with pytest.raises(ValueError, match="image_id 1.5, not an integer id"):
        evaluate_coco(two_image_gt(), per_image, vocabulary=Vocabulary(("a",)))
    # integral floats (some JSON writers emit 3.0) are the same id
    floats = [{"image_id": 1.0, "category_id": 1.0, "bbox": [10, 10, 50, 50], "score": 0.9}]
    assert evaluate_coco(two_image_gt(), floats, backend=backend)["AP50"] == evaluate_coco(
        two_image_gt(), [{**floats[0], "image_id": 1, "category_id": 1}], backend=backend)["AP50"]


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_repeated_category_id_is_named(backend):
    # per-category AP was zipped with the repeated ids: category 1 (AP 1.0) read 0.0 and category 2 vanished
    gt = two_image_gt()
    gt["categories"] += [{"id": 2, "name": "b"}, {"id": 1, "name": "a2"}]
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    with pytest.raises(ValueError, match=r"the ground-truth dict: category id 1 is used by categories \[0, 2\]"):
        evaluate_coco(gt, detections, backend=backend)


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_ground_truth_without_annotations_or_with_float_iscrowd(backend):
    # both stopped with a bare StopIteration from the iscrowd check
    gt = {**two_image_gt(), "annotations": []}
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    assert evaluate_coco(gt, detections, backend=backend)["AP"] == -1.0
    floats = two_image_gt()
    for annotation in floats["annotations"]:
        annotation["iscrowd"] = 0.0
    assert evaluate_coco(floats, detections, backend=backend) == evaluate_coco(two_image_gt(), detections,
                                                                               backend=backend)


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_annotations_of_unlisted_images_or_categories_are_named_not_skipped_silently(backend):
    # both evaluators skip them: a category left out of `categories` lost its boxes without a word
    gt = two_image_gt()
    gt["annotations"].append({"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25,
                              "iscrowd": 0})
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    with pytest.warns(UserWarning, match=r"1 annotation\(s\) refer to categories the file does not list "
                                         r"\(first: annotations\[2\], id 3, category_id 7\).*never score them"):
        evaluate_coco(gt, detections, backend=backend)
    gt["annotations"][2].update(category_id=1, image_id=9)
    with pytest.warns(UserWarning, match="refer to images the file does not list.*image_id 9"):
        evaluate_coco(gt, detections, backend=backend)


@pytest.mark.parametrize("entries, message", [
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}, [1, 1, 0, 0, 5, 5, 0.5]],
     r"entry 1 is \[1, 1, 0, 0, 5, 5, \.\.\.\], not an object"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": [0.5]}], r"entry 0 has score \[0.5\], not a number"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": {"v": 1}}], "entry 0 has score .*not a number"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": None}], "entry 0 has score None, not a number"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5},
      {"image_id": 1, "category_id": 1, "box": [0, 0, 5, 5], "score": 0.5}], "entry 1 lacks the key 'bbox'"),
], ids=["list_entry", "score_list", "score_dict", "score_none", "wrong_key"])
def test_cli_eval_names_the_bad_detection_record(tmp_path, capsys, entries, message):
    # a list entry or a dict score was a bare TypeError; a [0.5] score reached pycocotools as a list
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(two_image_gt()))
    dets_path.write_text(json.dumps(entries))
    assert main(["eval", "--gt", str(gt_path), "--dets", str(dets_path)]) == 2
    assert re.search(rf"{re.escape(str(dets_path))}: COCO results {message}", capsys.readouterr().err)


@pytest.mark.parametrize("lvis", [False, True])
def test_cli_eval_names_a_file_cut_short(tmp_path, capsys, lvis):
    # json's bare "Expecting ',' delimiter: line 1 column 70" named neither file
    gt_path, dets_path, good_path = tmp_path / "gt.json", tmp_path / "dets.json", tmp_path / "good.json"
    gt_path.write_text(json.dumps(two_image_gt()))
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}] * 3
    dets_path.write_text(json.dumps(dets)[:70])
    good_path.write_text(json.dumps(dets))
    flags = ["--lvis"] if lvis else []
    assert main(["eval", "--gt", str(gt_path), "--dets", str(dets_path), *flags]) == 2
    assert f"{dets_path}: not valid JSON (Expecting" in capsys.readouterr().err
    gt_path.write_text(json.dumps(two_image_gt())[:60])
    assert main(["eval", "--gt", str(gt_path), "--dets", str(good_path), *flags]) == 2
    assert f"{gt_path}: not valid JSON (Expecting" in capsys.readouterr().err


def test_cli_eval_refuses_per_image_arrays_naming_the_fix(tmp_path, capsys):
    # the message asked for vocabulary=, an argument of the Python API the command line does not have
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(two_image_gt()))
    dets_path.write_text(json.dumps([{"image_id": 1, "boxes": [[10, 10, 60, 60]], "scores": [0.9], "labels": [0]}]))
    assert main(["eval", "--gt", str(gt_path), "--dets", str(dets_path)]) == 2
    err = capsys.readouterr().err
    assert f"{dets_path}: entry 0 holds per-image boxes" in err and "vocabulary=" not in err


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_categories_sharing_a_name_keep_their_own_ap(backend):
    # keyed by name, the second "fish" overwrote the first: category 1's AP 1.0 vanished from per_category_ap
    gt = two_image_gt()
    gt["categories"] = [{"id": 1, "name": "fish"}, {"id": 2, "name": "fish"}, {"id": 3, "name": "shark"}]
    gt["annotations"][1]["category_id"] = 2
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    stats = evaluate_coco(gt, detections, backend=backend)
    assert stats["per_category_ap"] == {"fish (id 1)": pytest.approx(1.0), "fish (id 2)": 0.0, "shark": -1.0}
