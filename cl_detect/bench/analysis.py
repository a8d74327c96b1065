"""Error analysis of one detector on one dataset: what it misses, by size, and what it confuses.

Detections are per-image dicts (image_id, boxes xyxy pixels, scores, labels
indexing the dataset's vocabulary), as `cl_detect.eval.detector_eval.run_detector`
returns them; `detections_from_coco` converts a COCO results list.

- By size (COCO buckets on the annotated area, COCO's `area` (the
  segmentation's), or box w*h where the source gave none: small < 32²,
  medium < 96², large otherwise): COCO AP@[.5:.95] (APs/APm/APl) and the
  objects *missed*, i.e. ground-truth boxes with no detection of the same
  class, score >= threshold, at IoU >= 0.5. Both use the same area, so an
  object sits in one bucket throughout the report.
- Confusion matrix: rows = ground-truth class plus a last "background" row,
  columns = predicted class plus a last "missed" column. Each ground-truth box
  counts once, under the class of its best-overlapping detection (any class,
  score >= threshold, IoU >= 0.5), or under "missed" when none overlaps.
  Each detection (score >= threshold) overlapping no ground truth at IoU >= 0.5
  (and not lying in a crowd/ignore region, which COCO's rule takes as
  intersection over the detection's own area >= 0.5) counts once in "background".
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary  # noqa: E402
from cl_detect.eval._detections import check_ids, to_columns  # noqa: E402

# (name, lower, upper) on box area in pixels², COCO's areaRng
SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, np.inf))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def box_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over the area of `a`: COCO's IoU of a detection with a crowd region."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None], 1e-9)


def area_bucket(area: np.ndarray) -> np.ndarray:
    """COCO size bucket index (0 small, 1 medium, 2 large) of each area in pixels²."""
    return np.searchsorted([upper for _, _, upper in SIZE_BUCKETS[:-1]], area, side="right")


def size_bucket(boxes: np.ndarray) -> np.ndarray:
    """COCO size bucket index (0 small, 1 medium, 2 large) of each xyxy box, by w*h."""
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return area_bucket(area)


def object_areas(record: DetectionRecord) -> np.ndarray:
    """The area COCO evaluation buckets each object by: the annotated one, box w*h where there is none.

    The same rule as the ground truth `ap_by_size` scores (`cl_detect.data.writers`), so
    AP by size and missed by size put every object in the same bucket.
    """
    boxes = record.boxes
    box_area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    if record.areas is None:
        return box_area.astype(np.float64)
    return np.where(np.isfinite(record.areas), record.areas, box_area)


def detections_from_coco(results: Sequence[dict], vocabulary: Vocabulary,
                         source: str | Path = "detections") -> list[dict]:
    """COCO results (image_id, category_id, bbox xywh, score) -> per-image dicts with label indices.

    Args:
        results: the COCO results list.
        vocabulary: the ground truth's classes, with their category ids.
        source: the detections file, named in errors.

    Raises:
        ValueError: a detection's category_id is not among the ground truth's (as `cl-detect eval`
            refuses it): dropping those detections would report a wrong AP.
    """
    index_of = vocabulary.index_of_category_id()
    try:  # the evaluators' checks: a bbox of exactly 4 numbers, known category ids (image ids: `analyze`)
        columns = to_columns(list(results))
        check_ids(columns, columns.image_ids, vocabulary.category_ids)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    labels = np.array([index_of[c] for c in columns.category_ids.tolist()], dtype=np.int64)
    detections = []
    for image_id in dict.fromkeys(columns.image_ids.tolist()):
        mine = columns.image_ids == image_id
        boxes = columns.boxes[mine].astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        detections.append({"image_id": int(image_id), "boxes": boxes,
                           "scores": columns.scores[mine].astype(np.float32), "labels": labels[mine]})
    return detections


def _check_iou_threshold(iou_threshold: float) -> None:
    """Refuse an IoU threshold outside (0, 1]: at 0 any detection anywhere in the image finds an object,
    above 1 none does, and the report would show those counts as if they were measured."""
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold (--iou) {iou_threshold} is outside (0, 1]; give one such as 0.5")


def _kept(detections: Sequence[dict], score_threshold: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    kept = {}
    for item in detections:
        keep = np.asarray(item["scores"]) >= score_threshold
        kept[int(item["image_id"])] = (np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4)[keep],
                                       np.asarray(item["labels"], dtype=np.int64)[keep])
    return kept


def missed_by_size(dataset: DetectionDataset, detections: Sequence[dict], score_threshold: float = 0.3,
                   iou_threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Ground-truth objects per size bucket (by `object_areas`) and how many have no same-class detection.

    Args:
        dataset: ground truth.
        detections: per-image dicts.
        score_threshold: detections below it are ignored.
        iou_threshold: overlap that counts as found.

    Returns:
        bucket -> {"objects", "missed", "missed_fraction"}.
    """
    _check_iou_threshold(iou_threshold)
    kept = _kept(detections, score_threshold)
    objects, missed = np.zeros(3, np.int64), np.zeros(3, np.int64)
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    for record in dataset.records:
        boxes, labels = kept.get(record.image_id, empty)
        iou = box_iou(record.boxes, boxes)
        found = ((iou >= iou_threshold) & (record.labels[:, None] == labels[None])).any(axis=1)
        buckets = area_bucket(object_areas(record))
        np.add.at(objects, buckets, 1)
        np.add.at(missed, buckets[~found], 1)
    return {name: {"objects": int(n), "missed": int(m), "missed_fraction": float(m / n) if n else float("nan")}
            for (name, _, _), n, m in zip(SIZE_BUCKETS, objects, missed)}


def ap_by_size(dataset: DetectionDataset, detections: Sequence[dict]) -> dict[str, float]:
    """COCO AP@[.5:.95] over all objects and per size bucket (NaN for an empty bucket)."""
    from cl_detect.eval.coco_eval import evaluate_coco
    from cl_detect.eval.detector_eval import ground_truth
    gt, vocabulary = ground_truth(dataset)
    stats = evaluate_coco(gt, list(detections), backend="fast", vocabulary=vocabulary)
    # pycocotools reports -1 for a bucket without ground truth
    return {name: float(stats[key]) if stats[key] >= 0 else float("nan")
            for name, key in (("all", "AP"), ("small", "APs"), ("medium", "APm"), ("large", "APl"))}


def confusion_matrix(dataset: DetectionDataset, detections: Sequence[dict], score_threshold: float = 0.3,
                     iou_threshold: float = 0.5) -> np.ndarray:
    """(K+1, K+1) counts: rows GT class + "background", columns predicted class + "missed".

    Args:
        dataset: ground truth with K classes.
        detections: per-image dicts.
        score_threshold: detections below it are ignored.
        iou_threshold: overlap that pairs a detection with a ground-truth box.
    """
    _check_iou_threshold(iou_threshold)
    num_classes = len(dataset.vocabulary)
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    kept = _kept(detections, score_threshold)
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    for record in dataset.records:
        boxes, labels = kept.get(record.image_id, empty)
        iou = box_iou(record.boxes, boxes)
        for gt_label, overlaps in zip(record.labels, iou):
            if gt_label < 0:  # unknown class (reader kept it for the doctor): not part of the vocabulary
                continue
            best = int(overlaps.argmax()) if len(overlaps) else -1
            column = labels[best] if best >= 0 and overlaps[best] >= iou_threshold else num_classes
            matrix[gt_label, column] += 1
        unmatched = iou.max(axis=0, initial=0.0) < iou_threshold
        if len(record.ignore_boxes):
            # a detection inside a crowd region is neither right nor wrong; COCO's rule measures the
            # overlap with a crowd region against the detection's own area, not the union
            unmatched &= box_ioa(boxes, record.ignore_boxes).max(axis=1, initial=0.0) < iou_threshold
        np.add.at(matrix[num_classes], labels[unmatched], 1)
    return matrix


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: str | Path) -> Path:
    """Draw the confusion matrix, colour = share of its row, counts written when it is small."""
    rows, columns = list(names) + ["background"], list(names) + ["missed"]
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(3 + 0.45 * len(columns), 24)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(columns) <= 25:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("predicted class (best-overlapping detection)")
    ax.set_ylabel("ground-truth class")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of row")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_size_breakdown(ap: dict[str, float], missed: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Bars of AP and missed fraction per size bucket, object counts in the labels."""
    names = [name for name, _, _ in SIZE_BUCKETS]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    labels = [f"{n}\n({missed[n]['objects']} obj.)" for n in names]
    axes[0].bar(labels, [np.nan_to_num(ap[n]) * 100 for n in names], color="tab:blue")
    axes[0].set_ylabel("AP@[.5:.95] (%)")
    axes[0].set_title(f"AP by object size (all: {ap['all'] * 100:.1f})", fontsize=9)
    axes[1].bar(labels, [np.nan_to_num(missed[n]["missed_fraction"]) * 100 for n in names], color="tab:red")
    axes[1].set_ylabel("missed objects (%)")
    axes[1].set_title("missed at IoU 0.5 (same class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _nan_to_null(value):
    if isinstance(value, dict):
        return {key: _nan_to_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_null(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def analyze(dataset: DetectionDataset, detections: Sequence[dict], out_dir: str | Path,
            score_threshold: float = 0.3, iou_threshold: float = 0.5) -> dict:
    """Write size_breakdown.png, confusion_matrix.png and analysis.json into `out_dir`.

    Args:
        dataset: ground truth.
        detections: per-image dicts.
        out_dir: output folder (created).
        score_threshold, iou_threshold: see `missed_by_size` and `confusion_matrix`.

    Returns:
        The analysis: AP and missed objects by size, the confusion matrix and its labels.
    """
    _check_iou_threshold(iou_threshold)
    # as `cl-detect eval` refuses them: dropping detections on unknown images would report a wrong AP
    check_ids(to_columns(detections, dataset.vocabulary), (r.image_id for r in dataset.records),
              dataset.vocabulary.category_ids)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ap = ap_by_size(dataset, detections)
    missed = missed_by_size(dataset, detections, score_threshold, iou_threshold)
    matrix = confusion_matrix(dataset, detections, score_threshold, iou_threshold)
    names = list(dataset.vocabulary.names)
    plot_size_breakdown(ap, missed, out_dir / "size_breakdown.png")
    plot_confusion(matrix, names, out_dir / "confusion_matrix.png")
    report = {"score_threshold": score_threshold, "iou_threshold": iou_threshold, "ap": ap,
              "missed_by_size": missed, "confusion_rows": names + ["background"],
              "confusion_columns": names + ["missed"], "confusion_matrix": matrix.tolist()}
    # NaN is not JSON; an empty bucket is written as null (replacing the text "NaN" also hit class names)
    text = json.dumps(_nan_to_null(report), indent=1, default=float, allow_nan=False)
    (out_dir / "analysis.json").write_text(text + "\n")
    return report
