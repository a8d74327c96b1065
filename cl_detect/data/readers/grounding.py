"""Grounding data: MDETR / GoldG-style COCO json with a caption per image.

Each image entry carries `caption`; each box annotation carries
`tokens_positive`, a list of [start, end) character spans into the caption.
A record's `phrases` are the distinct span groups (in caption order), its
labels index them, and `phrase_spans` keeps the spans so text encoders that
need token positions can rebuild them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers._common import load_json
from cl_detect.data.readers.coco import (box_xyxy, group_annotations, image_path_of, image_record_size,
                                         image_root_of, is_crowd)
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary

Spans = tuple[tuple[int, int], ...]


def phrase_of(caption: str, spans: Spans) -> str:
    """The text a group of spans points at (several spans joined by a space)."""
    return " ".join(caption[start:end] for start, end in spans)


def grounding_record(image_path: str, width: int, height: int, caption: str, boxes: list[list[float]],
                     spans_per_box: list[Spans], image_id: int = 0,
                     ignore_boxes: list[list[float]] | None = None) -> DetectionRecord:
    """Build a grounding record: distinct span groups become phrases, labels index them.

    Args:
        image_path, width, height, image_id: as in `DetectionRecord`.
        caption: the image caption.
        boxes: xyxy pixel boxes.
        spans_per_box: per box, its (start, end) character spans in `caption`.
        ignore_boxes: crowd regions.

    Returns:
        The record with `phrases`, `caption` and `phrase_spans` set.
    """
    distinct = sorted(set(spans_per_box), key=lambda spans: (spans[0] if spans else (-1, -1), spans))
    index_of = {spans: i for i, spans in enumerate(distinct)}
    return DetectionRecord(
        image_path, width, height, np.array(boxes, np.float32),
        np.array([index_of[spans] for spans in spans_per_box], np.int64), image_id=image_id,
        ignore_boxes=np.array(ignore_boxes or [], np.float32),
        phrases=tuple(phrase_of(caption, spans) for spans in distinct), caption=caption,
        phrase_spans=tuple(distinct))


def normalize_spans(spans, where: str) -> Spans:
    """[[s, e], ...] (or a single [s, e]) -> ((s, e), ...), sorted."""
    if spans and not isinstance(spans[0], (list, tuple)):
        spans = [spans]
    try:
        return tuple(sorted((int(start), int(end)) for start, end in spans))
    except (TypeError, ValueError) as error:
        raise DatasetFormatError(f"{where}: tokens_positive {spans!r} is not a list of [start, end] spans") from error


def is_grounding_json(data: dict) -> bool:
    """True when the json has captions on images and spans on annotations (looking past a first image
    without a caption: read as COCO, every box of the file would have lost its phrase)."""
    images, annotations = data.get("images", []), data.get("annotations", [])
    return (any("caption" in image for image in images[:50])
            and any("tokens_positive" in a for a in annotations[:50]))


def records_from_grounding(data: dict, json_path: str | Path,
                           image_root: str | Path | None = None) -> DetectionDataset:
    """Build grounding records from an already loaded MDETR-style dict (see `read_grounding`)."""
    json_path = Path(json_path)
    images = data.get("images", [])
    per_image = group_annotations(data, json_path)
    image_root = image_root_of(data, json_path, image_root)
    records = []
    for image in images:
        path = image_path_of(image, image_root, json_path)
        width, height = image_record_size(image, path, json_path)
        boxes, spans_per_box, ignore = [], [], []
        for annotation in per_image.get(image["id"], []):
            box = box_xyxy(annotation, json_path)
            if is_crowd(annotation, json_path):
                ignore.append(box)
                continue
            where = f"{json_path}: annotation id {annotation.get('id')} (image {image['id']})"
            if "tokens_positive" not in annotation:
                raise DatasetFormatError(f"{where} has no tokens_positive; grounding boxes need the caption "
                                         f"spans they refer to (or read the file with format='coco')")
            boxes.append(box)
            spans_per_box.append(normalize_spans(annotation["tokens_positive"], where))
        records.append(grounding_record(str(path), width, height, image.get("caption", ""), boxes,
                                        spans_per_box, int(image["id"]), ignore))
    return DetectionDataset(records, Vocabulary(()), source=str(json_path), image_root=str(image_root))


def read_grounding(src: str | Path, image_root: str | Path | None = None) -> DetectionDataset:
    """Read an MDETR / GoldG-style grounding json (COCO json + `caption` + `tokens_positive`).

    Args:
        src: the json file.
        image_root: folder the `file_name`s are relative to (default: guessed like COCO).

    Returns:
        A dataset with an empty vocabulary; every record has `phrases`, `caption`, `phrase_spans`.
    """
    return records_from_grounding(load_json(src), src, image_root)
