"""Detections in one columnar form, whatever the caller handed over.

Evaluators accept either a COCO results list (dicts with image_id,
category_id, bbox as xywh, score) or per-image arrays (dicts with image_id,
boxes as xyxy pixels, scores, labels indexing a `Vocabulary`). Both become a
`DetectionColumns`, which the fast backend reads directly and which turns back
into a results list for pycocotools / lvis-api with the very same float values.

Every results-list entry must be an object with a bbox of exactly 4 numbers
and a score that is one number, and every per-image `boxes` array (N, 4);
anything else is an error naming the first bad entry, never reshaped into
other boxes. Image and category ids must be integers (an
integral float such as 3.0 counts): 1.5 or "3" is an error, never truncated
or parsed into another image's id.
"""
from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cl_detect._config_keys import is_number
from cl_detect.data.records import Vocabulary


@dataclass
class DetectionColumns:
    """All detections of a dataset as parallel arrays.

    Args:
        image_ids: (N,) int64 image ids of the annotation file.
        category_ids: (N,) int64 category ids of the annotation file.
        boxes: (N, 4) float64 xywh in pixels (COCO results convention).
        scores: (N,) float64 confidences.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def to_results(self) -> list[dict]:
        """Return a fresh COCO results list (the evaluators mutate what they get)."""
        return [
            {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
            for image_id, category_id, box, score in zip(
                self.image_ids.tolist(), self.category_ids.tolist(), self.boxes.tolist(), self.scores.tolist())
        ]

    def subset(self, keep: np.ndarray) -> "DetectionColumns":
        """Rows selected by a boolean mask or index array, order preserved."""
        return DetectionColumns(self.image_ids[keep], self.category_ids[keep], self.boxes[keep], self.scores[keep])


INT64_MAX = np.iinfo(np.int64).max


def _is_integer(value) -> bool:
    """An id that int64 holds exactly: an integer, or an integral float (JSON writers emit 3.0)."""
    if isinstance(value, (int, np.integer)):
        return -INT64_MAX - 1 <= int(value) <= INT64_MAX
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value) and float(value).is_integer() and abs(value) < 2.0 ** 63
    return False


def first_non_integer(values: Sequence) -> int | None:
    """Index of the first value that is not an integer id fitting int64, or None when all are."""
    column = np.asarray(values)
    if column.ndim == 1 and column.dtype.kind == "i":
        return None  # the common case, without a Python loop
    return next((index for index, value in enumerate(values) if not _is_integer(value)), None)


def _id_column(results: Sequence[Mapping], key: str) -> np.ndarray:
    values = [r[key] for r in results]
    bad = first_non_integer(values)
    if bad is not None:
        raise ValueError(
            f"COCO results entry {bad} has {key} {reprlib.repr(values[bad])}, not an integer id; write the "
            f"annotation file's integer {key} (1.5 or \"12\" would be scored as another id or not at all)")
    return np.array(values, dtype=np.int64)


def _empty() -> DetectionColumns:
    return DetectionColumns(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))


def _is_box(bbox) -> bool:
    """True for 4 numbers (NaN and inf are refused later by `check_ids`, with a count)."""
    try:
        values = np.asarray(bbox)
    except ValueError:  # ragged nesting
        return False
    return values.shape == (4,) and values.dtype.kind in "iuf"


def _boxes_of_results(results: Sequence[Mapping]) -> np.ndarray:
    """(N, 4) float64 from each entry's bbox; a ValueError names the first entry that is not 4 numbers."""
    bboxes = [r["bbox"] for r in results]
    try:
        boxes = np.asarray(bboxes)
    except ValueError:  # ragged: some bbox has another length
        boxes = None
    if boxes is not None and boxes.shape == (len(bboxes), 4) and boxes.dtype.kind in "iuf":
        return boxes.astype(np.float64)
    bad = [index for index, bbox in enumerate(bboxes) if not _is_box(bbox)]
    if not bad:  # every bbox is fine on its own, but of types np.asarray could not stack at once
        return np.stack([np.asarray(bbox, dtype=np.float64) for bbox in bboxes])
    raise ValueError(
        f"COCO results entry {bad[0]} has bbox {reprlib.repr(bboxes[bad[0]])}, not 4 numbers "
        f"({len(bad)} of {len(bboxes)} entries are bad); write each bbox as [x, y, width, height] in pixels "
        "(per-image xyxy boxes go in dicts with boxes, scores, labels instead)")


def _scores_of_results(results: Sequence[Mapping]) -> np.ndarray:
    """(N,) float64 from each entry's score; a ValueError names the first entry whose score is not a number."""
    scores = [r["score"] for r in results]
    try:
        column = np.asarray(scores)
    except ValueError:  # ragged nesting
        column = None
    if column is not None and column.shape == (len(scores),) and column.dtype.kind in "iuf":
        return column.astype(np.float64)
    bad = next((index for index, score in enumerate(scores) if not is_number(score)), None)
    if bad is not None:
        raise ValueError(
            f"COCO results entry {bad} has score {reprlib.repr(scores[bad])}, not a number; write each score as "
            "one number (the detection's confidence)")
    return np.array(scores, dtype=np.float64)


def _from_results(results: Sequence[Mapping]) -> DetectionColumns:
    try:
        image_ids = _id_column(results, "image_id")
        category_ids = _id_column(results, "category_id")
        boxes = _boxes_of_results(results)
        scores = _scores_of_results(results)
    except KeyError as err:
        key = err.args[0]
        bad = next(index for index, entry in enumerate(results) if key not in entry)
        raise ValueError(
            f"COCO results entry {bad} lacks the key {key!r} (it has {list(results[bad])}); each entry needs "
            "image_id, category_id, bbox ([x, y, width, height] in pixels) and score") from None
    except TypeError:  # an entry that is not a dict (r[key] on a list or a number)
        bad = next((index for index, entry in enumerate(results) if not isinstance(entry, Mapping)), None)
        if bad is None:
            raise
        raise ValueError(
            f"COCO results entry {bad} is {reprlib.repr(results[bad])}, not an object; write each detection as "
            "{\"image_id\": ..., \"category_id\": ..., \"bbox\": [x, y, width, height], \"score\": ...}") from None
    return DetectionColumns(image_ids, category_ids, boxes, scores)


def _from_arrays(per_image: Sequence[Mapping], vocabulary: Vocabulary | None) -> DetectionColumns:
    if vocabulary is None:
        raise ValueError(
            "per-image detections carry labels (vocabulary indices); pass vocabulary= so they can be "
            "mapped to the annotation file's category ids")
    category_of_label = np.asarray(vocabulary.category_ids, dtype=np.int64)
    columns = []
    for item in per_image:
        # float64 before subtracting, so width = x2 - x1 is what a caller doing
        # the same conversion in float64 gets
        xyxy = np.asarray(item["boxes"], dtype=np.float64)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(
                f"image {item['image_id']}: boxes have shape {xyxy.shape}; per-image boxes must be (N, 4) "
                "[x1, y1, x2, y2] in pixels")
        if not _is_integer(item["image_id"]):
            raise ValueError(f"per-image detections have image_id {reprlib.repr(item['image_id'])}, not an integer "
                             "id; use the annotation file's integer image id")
        labels = np.asarray(item["labels"], dtype=np.int64).reshape(-1)
        scores = np.asarray(item["scores"], dtype=np.float64).reshape(-1)
        if not len(xyxy) == len(labels) == len(scores):
            raise ValueError(
                f"image {item['image_id']}: {len(xyxy)} boxes, {len(labels)} labels and {len(scores)} scores")
        bad = labels[(labels < 0) | (labels >= len(category_of_label))]
        if len(bad):
            raise ValueError(
                f"image {item['image_id']}: label {int(bad[0])} is outside the vocabulary of "
                f"{len(category_of_label)} classes; labels must index Vocabulary.names")
        xywh = np.stack([xyxy[:, 0], xyxy[:, 1], xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1)
        image_ids = np.full(len(labels), int(item["image_id"]), dtype=np.int64)
        columns.append(DetectionColumns(image_ids, category_of_label[labels], xywh, scores))
    if not columns:
        return _empty()
    return DetectionColumns(*(np.concatenate([getattr(c, f) for c in columns])
                              for f in ("image_ids", "category_ids", "boxes", "scores")))


def to_columns(detections: Sequence[Mapping] | DetectionColumns,
               vocabulary: Vocabulary | None = None) -> DetectionColumns:
    """Convert any accepted detections input to columns.

    Args:
        detections: a COCO results list, a list of per-image dicts with
            `image_id`, `boxes` (xyxy), `scores`, `labels`, or columns already.
        vocabulary: maps per-image `labels` to category ids; unused for results lists.

    Returns:
        The detections as `DetectionColumns`.
    """
    if isinstance(detections, DetectionColumns):
        return detections
    detections = list(detections)
    if not detections:
        return _empty()
    if isinstance(detections[0], Mapping) and "boxes" in detections[0]:
        return _from_arrays(detections, vocabulary)
    return _from_results(detections)


def check_ids(columns: DetectionColumns, image_ids: Iterable[int], category_ids: Iterable[int]) -> None:
    """Raise a ValueError naming the first detection id the ground truth does not know.

    Args:
        columns: the detections.
        image_ids: image ids of the ground truth.
        category_ids: category ids of the ground truth.
    """
    known_images = np.fromiter(image_ids, dtype=np.int64)
    unknown = np.setdiff1d(np.unique(columns.image_ids), known_images)
    if len(unknown):
        raise ValueError(
            f"detections reference image_id {int(unknown[0])} ({len(unknown)} unknown image ids in all), "
            f"which the ground truth ({len(known_images)} images) does not contain; score detections against "
            "the annotation file they were predicted for, and use its image ids")
    known_categories = np.fromiter(category_ids, dtype=np.int64)
    unknown = np.setdiff1d(np.unique(columns.category_ids), known_categories)
    if len(unknown):
        raise ValueError(
            f"detections reference category_id {int(unknown[0])} ({len(unknown)} unknown category ids in all), "
            f"which is not among the ground truth's {len(known_categories)} categories; if these are label "
            "indices, pass per-image arrays with vocabulary= (mapped through Vocabulary.category_ids) or map "
            "them yourself")
    if len(columns) and not np.all(np.isfinite(columns.scores)):
        raise ValueError("detections contain non-finite scores (NaN or inf); the ranking would be undefined")
    bad_boxes = ~np.all(np.isfinite(columns.boxes), axis=1)
    if bad_boxes.any():
        first = int(np.flatnonzero(bad_boxes)[0])
        raise ValueError(
            f"detections contain {int(bad_boxes.sum())} box(es) with non-finite coordinates (NaN or inf; first: "
            f"detection {first}, image_id {int(columns.image_ids[first])}); pycocotools would match a NaN box to "
            "ground truth and count it correct, so drop such detections (a diverged model) before scoring")
