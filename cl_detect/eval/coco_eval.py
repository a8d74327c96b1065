"""COCO bbox evaluation: pycocotools' statistics, or the same numbers faster.

`evaluate_coco(gt, detections)` returns AP, AP50, AP75, APs/m/l, AR at 1, 10
and max_dets detections, and AP per category, computed by pycocotools'
COCOeval ('bbox') or by the vectorised `fast` backend, which gives identical
numbers (tests/test_eval_coco.py). The summary is read from the precision and
recall arrays like COCOeval.summarize does, with one difference: every AP uses
the largest maxDets, where pycocotools hard-codes 100 for the overall AP
(the two agree at the COCO default of 100).

A category without ground truth has AP -1 (pycocotools' convention) and is
left out of every mean; no ground truth at all gives -1 overall. Detections on
images that do have ground truth but nothing detected still count, so empty
detections score 0.0.

The ground truth must carry every key pycocotools reads, annotations' `area`
and `iscrowd` included; a missing one is a ValueError naming the first record
that lacks it, for both backends (no default that pycocotools would not apply).
So is a value the backends would read differently or not at all: a non-integer
id, a repeated image, category or annotation id (the backends index records by
id: two images would merge, per-category APs would pair with the wrong ids, one
annotation would be scored twice), a bbox that is not 4 finite numbers, an `area`
that is not a finite number, an `iscrowd` other than 0 / 1.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import reprlib
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from cl_detect.data.records import Vocabulary
from cl_detect.eval._detections import DetectionColumns, check_ids, first_non_integer, to_columns

BACKENDS = ("pycocotools", "fast")
AREA_NAMES = ("all", "small", "medium", "large")


# What pycocotools reads from every record (COCO.createIndex, COCOeval.evaluateImg, our summary).
COCO_REQUIRED_KEYS = {
    "images": ("id",),
    "categories": ("id", "name"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd"),
}
COCO_KEYS_FIX = ("add it to every record: pycocotools reads images' id, categories' id and name, and "
                 "annotations' id, image_id, category_id, bbox, area (the object's area in pixels, which decides "
                 "small / medium / large: width * height of the bbox when there is no mask) and iscrowd (0, or "
                 "1 for crowd regions)")


def check_gt_keys(dataset, source: str, required: Mapping[str, Sequence[str]], fix: str) -> None:
    """Raise a ValueError naming the first ground-truth record that lacks a required key.

    Args:
        dataset: the parsed annotation file.
        source: how to name it in errors (its path).
        required: per top-level list ("images", ...), the keys each record must have.
        fix: what the error tells the user to do.
    """
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(part), list) for part in required):
        found = sorted(dataset) if isinstance(dataset, dict) else type(dataset).__name__
        raise ValueError(f"{source}: not a COCO-format annotation file: expected a JSON object with the lists "
                         f"{', '.join(required)}, found {found}")
    for part, keys in required.items():
        records = dataset[part]
        for key in keys:
            lacking = [index for index, record in enumerate(records) if key not in record]
            if lacking:
                record = records[lacking[0]]
                raise ValueError(
                    f"{source}: {part}[{lacking[0]}] (id {record.get('id')}) has no {key!r} "
                    f"({len(lacking)} of {len(records)} {part} lack it); {fix}")


def _first_bad_box(bboxes: list) -> int | None:
    """Index of the first bbox that is not 4 finite numbers, or None."""
    try:
        boxes = np.asarray(bboxes, dtype=np.float64)
        if boxes.shape == (len(bboxes), 4) and np.isfinite(boxes).all():
            return None
    except (ValueError, TypeError):
        pass
    for index, bbox in enumerate(bboxes):
        try:
            box = np.asarray(bbox, dtype=np.float64)
        except (ValueError, TypeError):
            return index
        if isinstance(bbox, str) or box.shape != (4,) or not np.isfinite(box).all():
            return index
    return None


# What the evaluators would do with two records of one id (they index records by id).
_REPEATED_ID_EFFECTS = {
    ("images", "image"): "the evaluators would merge their annotations into one image",
    ("categories", "category"): "the evaluators would score the category once under the last name, and the "
                                "per-category APs would be paired with the wrong ids and names",
    ("annotations", "annotation"): "pycocotools looks annotations up by id, so it would score one of them twice "
                                   "and lose the others (renumber them 1..N)",
}


def check_gt_values(dataset: dict, source: str, crowd: bool = True) -> None:
    """Raise a ValueError naming the first ground-truth record with a value the evaluators misread.

    Args:
        dataset: the parsed annotation file (its keys already checked).
        source: how to name it in errors (its path).
        crowd: check `iscrowd` too (COCO; the lvis-api does not read it).
    """
    def fail(part: str, index: int, key: str, problem: str, fix: str):
        record = dataset[part][index]
        named = f"{part}[{index}]" if key == "id" else f"{part}[{index}] (id {reprlib.repr(record.get('id'))})"
        raise ValueError(f"{source}: {named} has {key} {reprlib.repr(record[key])}, {problem}; {fix}")

    for part, key in (("images", "id"), ("categories", "id"), ("annotations", "id"),
                      ("annotations", "image_id"), ("annotations", "category_id")):
        bad = first_non_integer([record[key] for record in dataset[part]])
        if bad is not None:
            fail(part, bad, key, "not an integer id", "detections are scored by integer ids: renumber them "
                 "(e.g. 1..N, keeping names in file_name) in the annotations and the detections alike")
    for (part, singular), effect in _REPEATED_ID_EFFECTS.items():
        records = dataset[part]
        ids, first, counts = np.unique(np.array([r["id"] for r in records], dtype=np.int64),
                                       return_index=True, return_counts=True)
        if (counts > 1).any():
            index = int(np.sort(first[counts > 1])[0])
            repeats = [i for i, r in enumerate(records) if r["id"] == records[index]["id"]]
            raise ValueError(
                f"{source}: {singular} id {records[index]['id']} is used by {part} {repeats[:5]} "
                f"({int((counts > 1).sum())} ids repeat); {effect}; give every {singular} its own id")
    annotations = dataset["annotations"]
    bad = _first_bad_box([a["bbox"] for a in annotations])
    if bad is not None:
        fail("annotations", bad, "bbox", "not 4 finite numbers", "write each bbox as [x, y, width, height] in "
             "pixels, or drop the annotation")
    areas = [a["area"] for a in annotations]
    column = np.asarray(areas)
    bad = None if column.dtype.kind in "iuf" and np.isfinite(column).all() else next((
        i for i, area in enumerate(areas) if isinstance(area, (bool, np.bool_))
        or not isinstance(area, (int, float, np.number)) or not np.isfinite(area)), None)
    if bad is not None:
        fail("annotations", bad, "area", "not a finite number", "write the object's area in pixels (width * "
             "height of the bbox when there is no mask); it decides small / medium / large")
    if crowd:
        column = np.asarray([a["iscrowd"] for a in annotations])
        bad = None if column.dtype.kind in "iub" and np.isin(column, (0, 1)).all() else next((
            i for i, a in enumerate(annotations) if a["iscrowd"] not in (0, 1)), None)  # none, or 0.0 / 1.0
        if bad is not None:
            fail("annotations", bad, "iscrowd", "not 0 or 1", "write 0, or 1 for a crowd region")
    _warn_unlisted_ids(dataset, source)


def _warn_unlisted_ids(dataset: dict, source: str) -> None:
    """Warn about annotations whose image or category the file does not list: both evaluators skip them."""
    annotations = dataset["annotations"]
    for key, part in (("image_id", "images"), ("category_id", "categories")):
        listed = np.array([r["id"] for r in dataset[part]], dtype=np.int64)
        unlisted = np.flatnonzero(~np.isin(np.array([a[key] for a in annotations], dtype=np.int64), listed))
        if len(unlisted):
            first = annotations[int(unlisted[0])]
            warnings.warn(f"{source}: {len(unlisted)} annotation(s) refer to {part} the file does not list (first: "
                          f"annotations[{int(unlisted[0])}], id {first['id']}, {key} {first[key]}); the evaluators "
                          f"never score them: add the missing {part} records, or remove those annotations",
                          stacklevel=3)


def read_json(path: str | Path):
    """A JSON file's content; a file that is not valid JSON (cut short, not UTF-8) is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); write the file again (was it cut short?)") from None


def load_coco_gt(gt: str | Path | dict | COCO) -> COCO:
    """Return a pycocotools COCO object from a path, a dataset dict or a COCO object.

    Args:
        gt: annotation file, its parsed dict (copied, not modified) or a COCO object.

    Returns:
        The COCO ground truth, built without pycocotools' progress prints.

    Raises:
        ValueError: a record lacks a key pycocotools reads, or has a value the backends would
            misread (named, with the fix).
    """
    if isinstance(gt, COCO):
        check_gt_keys(gt.dataset, "the ground truth", COCO_REQUIRED_KEYS, COCO_KEYS_FIX)
        check_gt_values(gt.dataset, "the ground truth")
        return gt
    if isinstance(gt, (str, Path)):
        dataset, source = read_json(gt), str(gt)
    else:
        dataset, source = copy.deepcopy(dict(gt)), "the ground-truth dict"
    check_gt_keys(dataset, source, COCO_REQUIRED_KEYS, COCO_KEYS_FIX)
    check_gt_values(dataset, source)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_params(coco_gt: COCO, max_dets: int = 100) -> Params:
    """pycocotools bbox parameters with maxDets [1, 10, max_dets] over all GT images and categories."""
    if max_dets < 10:
        raise ValueError(f"max_dets must be at least 10 (maxDets are [1, 10, max_dets]), got {max_dets}")
    params = Params(iouType="bbox")
    params.imgIds = sorted(coco_gt.getImgIds())
    params.catIds = sorted(coco_gt.getCatIds())
    params.maxDets = [1, 10, int(max_dets)]
    return params


def load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """pycocotools' loadRes, also for an empty list (loadRes fails on one)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            return coco_gt.loadRes(results)
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                           "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []}
        coco_dt.createIndex()
    return coco_dt


def run_pycocotools(coco_gt: COCO, detections: DetectionColumns, params: Params) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval evaluate + accumulate with its prints captured; returns (precision, recall)."""
    coco_dt = load_results(coco_gt, detections.to_results())
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params = copy.deepcopy(params)  # COCOeval rewrites its params in place
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"], evaluator.eval["recall"]


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if len(valid) else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray, params: Params) -> dict[str, float]:
    """COCO summary statistics from accumulated arrays, as COCOeval.summarize computes them.

    Args:
        precision: (T, R, K, A, M) from accumulate.
        recall: (T, K, A, M) from accumulate.
        params: the parameters they were computed with.

    Returns:
        AP, AP50, AP75, APs, APm, APl (at the largest maxDets), AR@m for each
        maxDets m, and ARs, ARm, ARl.
    """
    iou_thrs = np.asarray(params.iouThrs)
    max_dets = sorted(params.maxDets)

    def ap(iou=None, area="all"):
        s = precision if iou is None else precision[np.where(iou == iou_thrs)[0]]
        return _mean_valid(s[:, :, :, [AREA_NAMES.index(area)], [len(max_dets) - 1]])

    def ar(m, area="all"):
        return _mean_valid(recall[:, :, [AREA_NAMES.index(area)], [m]])

    stats = {"AP": ap(), "AP50": ap(0.5), "AP75": ap(0.75),
             "APs": ap(area="small"), "APm": ap(area="medium"), "APl": ap(area="large")}
    for m, max_det in enumerate(max_dets):
        stats[f"AR{max_det}"] = ar(m)
    for area in ("small", "medium", "large"):
        stats[f"AR{area[0]}"] = ar(len(max_dets) - 1, area)
    return stats


def by_name(names: Sequence[str], ids: Sequence[int], values: Sequence[float]) -> dict[str, float]:
    """Per-category values keyed by name; a name that several categories share gets its id, "fish (id 2)"."""
    counts = Counter(names)
    return {name if counts[name] == 1 else f"{name} (id {int(i)})": float(v) for name, i, v in zip(names, ids, values)}


def per_category_ap(precision: np.ndarray) -> np.ndarray:
    """(K,) AP@[.5:.95] per category, area 'all', largest maxDets; -1 without ground truth."""
    return np.array([_mean_valid(precision[:, :, k, 0, -1]) for k in range(precision.shape[2])])


class CocoEvaluator:
    """Scores detections against one COCO ground truth.

    Collect detections with `add()` (e.g. batch by batch during inference) and
    call `compute()`, or call `evaluate(detections)` once.

    Args:
        gt: annotation file, dataset dict or pycocotools COCO object.
        max_dets: detections kept per image and category, COCO protocol 100.
        backend: "pycocotools" (COCOeval) or "fast" (identical statistics, vectorised).
        vocabulary: maps per-image `labels` to category ids (needed only for per-image arrays).
    """

    def __init__(self, gt: str | Path | dict | COCO, max_dets: int = 100, backend: str = "pycocotools",
                 vocabulary: Vocabulary | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        self.coco_gt = load_coco_gt(gt)
        self.params = coco_params(self.coco_gt, max_dets)
        self.backend = backend
        self.vocabulary = vocabulary
        self._parts: list[DetectionColumns] = []

    def reset(self) -> None:
        self._parts = []

    def add(self, detections: Sequence[Mapping] | DetectionColumns) -> None:
        """Add detections: a COCO results list or per-image dicts (image_id, boxes xyxy, scores, labels)."""
        columns = to_columns(detections, self.vocabulary)
        check_ids(columns, self.params.imgIds, self.params.catIds)
        self._parts.append(columns)

    def compute(self) -> dict:
        """Statistics of everything added so far.

        Returns:
            A dict with protocol, backend, AP, AP50, AP75, APs, APm, APl, AR
            values, `per_category_ap` (by name; "name (id N)" for a name that
            several categories share) and `per_category_ap_by_id` (-1 for
            categories without ground truth), and num_detections.
        """
        parts = self._parts or [to_columns([])]
        columns = DetectionColumns(*(np.concatenate([getattr(p, f) for p in parts])
                                     for f in ("image_ids", "category_ids", "boxes", "scores")))
        if self.backend == "fast":
            from cl_detect.eval.fast_coco import evaluate_bbox
            precision, recall = evaluate_bbox(self.coco_gt, columns, self.params)
        else:
            precision, recall = run_pycocotools(self.coco_gt, columns, self.params)
        category_ap = per_category_ap(precision)
        names = [self.coco_gt.cats[c]["name"] for c in self.params.catIds]
        return {
            "protocol": f"coco-{self.params.maxDets[-1]}dets",
            "backend": self.backend,
            **summarize(precision, recall, self.params),
            "per_category_ap": by_name(names, self.params.catIds, category_ap),
            "per_category_ap_by_id": {int(c): float(v) for c, v in zip(self.params.catIds, category_ap)},
            "num_detections": len(columns),
        }

    def evaluate(self, detections: Sequence[Mapping] | DetectionColumns) -> dict:
        """Score one complete set of detections (see `compute` for the result)."""
        self.reset()
        self.add(detections)
        return self.compute()


def evaluate_coco(gt: str | Path | dict | COCO, detections: Sequence[Mapping] | DetectionColumns,
                  max_dets: int = 100, backend: str = "pycocotools", vocabulary: Vocabulary | None = None) -> dict:
    """Score detections with the COCO bbox protocol.

    Args:
        gt: annotation file, dataset dict or pycocotools COCO object.
        detections: a COCO results list (image_id, category_id, bbox xywh,
            score) or per-image dicts (image_id, boxes xyxy, scores, labels).
        max_dets: detections per image and category (COCO: 100).
        backend: "pycocotools" or "fast".
        vocabulary: maps per-image labels to category ids.

    Returns:
        See `CocoEvaluator.compute`.
    """
    return CocoEvaluator(gt, max_dets=max_dets, backend=backend, vocabulary=vocabulary).evaluate(detections)
