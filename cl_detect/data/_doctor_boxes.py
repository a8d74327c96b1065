"""Doctor checks on boxes and labels: swapped conventions, out-of-image, zero area, bad labels.

Box checks look at the whole dataset first: a convention mix-up (xywh read as
xyxy, or xyxy read as xywh) shows as a consistent pattern over many boxes and
is reported once with its fix, instead of as hundreds of per-box findings.
"""
from __future__ import annotations

import numpy as np

from cl_detect.data.records import DetectionDataset

# a pattern counts as consistent when it covers this share of the boxes
PATTERN_SHARE = 0.2
# and the other reading of the numbers fits the image for this share of them
FITS_SHARE = 0.9
# zero-area boxes are an error (not a warning) from this share of the boxes on
ZERO_AREA_ERROR_SHARE = 0.01


def _gather(dataset: DetectionDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All boxes (N, 4), per-box image (width, height) (N, 2), per-box (record, box) index (N, 2)."""
    boxes, sizes, where = [np.zeros((0, 4), np.float32)], [np.zeros((0, 2))], [np.zeros((0, 2), np.int64)]
    for i, record in enumerate(dataset.records):
        n = len(record.boxes)
        boxes.append(record.boxes)
        sizes.append(np.tile([record.width, record.height], (n, 1)))
        where.append(np.stack([np.full(n, i), np.arange(n)], 1))
    return np.concatenate(boxes).astype(np.float64), np.concatenate(sizes), np.concatenate(where)


def _name(dataset: DetectionDataset, record_index: int, box_index: int | None = None) -> str:
    record = dataset.records[record_index]
    box = ""
    if box_index is not None:
        box = f", box {box_index} {np.round(record.boxes[box_index].astype(np.float64), 1).tolist()}"
    return f"{record.image_path} (image id {record.image_id}, {record.width}x{record.height}{box})"


def check_boxes(dataset: DetectionDataset, add) -> None:
    """Report convention mix-ups, inverted / zero-area / non-finite boxes and boxes outside the image.

    Args:
        dataset: the dataset.
        add: callback `add(severity, code, message, fix)`.
    """
    boxes, sizes, where = _gather(dataset)
    if not len(boxes):
        return
    finite = np.isfinite(boxes).all(1)
    for r, b in where[~finite]:
        add("error", "nonfinite_box", f"{_name(dataset, r, b)} has NaN or infinite coordinates",
            "fix or remove the annotation")
    boxes, sizes, where = boxes[finite], sizes[finite], where[finite]
    x1, y1, x2, y2 = boxes.T
    width, height = sizes.T
    known = (width > 0) & (height > 0)
    inverted = (x2 < x1) | (y2 < y1)
    if _looks_like_xywh(boxes, sizes, inverted):
        r, b = where[inverted][0]
        add("error", "boxes_look_like_xywh",
            f"{inverted.sum()} of {len(boxes)} boxes have x2 < x1 or y2 < y1 and all of them fit the image when "
            f"read as x, y, width, height: the annotations hold xywh but were read as xyxy "
            f"(e.g. {_name(dataset, r, b)})",
            "convert the boxes to x1,y1,x2,y2 (x2 = x + w, y2 = y + h) or read the file with its real format")
    else:
        for r, b in where[inverted]:
            add("error", "inverted_box", f"{_name(dataset, r, b)} has x2 < x1 or y2 < y1",
                "swap the corners or fix the annotation")
    zero = ~inverted & ((x2 == x1) | (y2 == y1))
    # a few degenerate boxes are common in exported datasets (ODinW Aquarium has 2 of 4817) and carry no
    # signal; many of them mean the widths/heights were lost on the way (a conversion bug)
    severity = "error" if zero.mean() >= ZERO_AREA_ERROR_SHARE else "warning"
    for r, b in where[zero]:
        add(severity, "zero_area_box", f"{_name(dataset, r, b)} has zero width or height",
            "remove the box or give it its real extent")
    tolerance_x, tolerance_y = np.maximum(2, 0.01 * width), np.maximum(2, 0.01 * height)
    spill = known & ~inverted & ((x1 < -tolerance_x) | (y1 < -tolerance_y) | (x2 > width + tolerance_x)
                                 | (y2 > height + tolerance_y))
    if _looks_like_xyxy(boxes, sizes, spill):
        r, b = where[spill][0]
        add("error", "boxes_look_like_xyxy",
            f"{spill.sum()} of {len(boxes)} boxes extend past the right/bottom image edge and fit it when their "
            f"width/height are read as x2/y2: the annotations hold x1,y1,x2,y2 but were read as xywh "
            f"(e.g. {_name(dataset, r, b)})",
            "write COCO bbox as [x, y, x2 - x, y2 - y], or read the file with its real format")
        return
    _report_outside(dataset, boxes[spill], sizes[spill], where[spill], add)


def _looks_like_xywh(boxes: np.ndarray, sizes: np.ndarray, inverted: np.ndarray) -> bool:
    if inverted.sum() < 2 or inverted.mean() < PATTERN_SHARE:
        return False
    x, y, w, h = boxes.T
    fits = (x + w <= sizes[:, 0] * 1.02 + 1) & (y + h <= sizes[:, 1] * 1.02 + 1) & (w > 0) & (h > 0)
    return fits.mean() >= FITS_SHARE


def _looks_like_xyxy(boxes: np.ndarray, sizes: np.ndarray, spill: np.ndarray) -> bool:
    if spill.sum() < 2 or spill.mean() < PATTERN_SHARE:
        return False
    x1, y1, x2, y2 = boxes[spill].T
    true_x2, true_y2 = x2 - x1, y2 - y1
    fits = ((true_x2 > x1) & (true_y2 > y1) & (true_x2 <= sizes[spill, 0] * 1.02 + 1)
            & (true_y2 <= sizes[spill, 1] * 1.02 + 1))
    return fits.mean() >= FITS_SHARE


def _report_outside(dataset: DetectionDataset, boxes: np.ndarray, sizes: np.ndarray, where: np.ndarray, add) -> None:
    """Boxes mostly or fully outside the image are errors; small spills are warnings (often clipped later)."""
    for box, (width, height), (r, b) in zip(boxes, sizes, where):
        x1, y1, x2, y2 = box
        inside = max(0.0, min(x2, width) - max(x1, 0)) * max(0.0, min(y2, height) - max(y1, 0))
        area = (x2 - x1) * (y2 - y1)
        mostly_outside = area <= 0 or inside / area < 0.5
        how = ("lies mostly outside" if inside > 0 else "lies entirely outside") if mostly_outside else "extends past"
        add("error" if mostly_outside else "warning", "box_outside_image",
            f"{_name(dataset, r, b)} {how} the {int(width)}x{int(height)} image",
            "check the box convention and the image size; clip or remove the box")


def check_labels(dataset: DetectionDataset, add) -> None:
    """Labels outside the vocabulary (or outside a grounding record's phrases) and broken phrase spans."""
    num_classes = len(dataset.vocabulary)
    for i, record in enumerate(dataset.records):
        limit = len(record.phrases) if record.is_grounding else num_classes
        for b in np.flatnonzero((record.labels < 0) | (record.labels >= limit)):
            label = int(record.labels[b])
            why = ("its category id is not in the categories list" if label < 0 and not record.is_grounding
                   else f"only {limit} {'phrases' if record.is_grounding else 'classes'} exist")
            add("error", "label_out_of_range", f"{_name(dataset, i, b)} has label {label}: {why}",
                "add the missing category / class name, or fix the class id in the annotation")
        if record.is_grounding:
            for phrase, spans in zip(record.phrases, record.phrase_spans):
                if not phrase.strip() or any(s < 0 or e > len(record.caption) or e <= s for s, e in spans):
                    add("error", "span_out_of_range", f"{_name(dataset, i)}: phrase spans {list(spans)} do not "
                        f"point inside the {len(record.caption)}-character caption", "fix tokens_positive")


def check_class_usage(dataset: DetectionDataset, add) -> None:
    """Classes no box uses (a warning: fine for a test split, suspicious for training)."""
    if not len(dataset.vocabulary) or all(r.is_grounding for r in dataset.records):
        return
    counts = np.bincount(np.concatenate([r.labels[r.labels >= 0] for r in dataset.records] + [np.zeros(0, np.int64)]),
                         minlength=len(dataset.vocabulary))
    unused = [name for name, count in zip(dataset.vocabulary.names, counts) if count == 0]
    if unused:
        add("warning", "unused_class", f"{dataset.source}: {len(unused)} of {len(dataset.vocabulary)} classes have no "
            f"box: {', '.join(unused[:10])}{' ...' if len(unused) > 10 else ''}",
            "fine for a test split or a large vocabulary; otherwise check the class list against the labels")
