"""DetectionDataset -> COCO json (the interchange format every tool reads).

Categories get ids 1..K in class order (their source id, synonyms and
frequency are kept as extra keys), image `file_name`s are relative to an image
root that is recorded in `info.image_root` (relative to the json, so the folder
can be moved), crowd / ignore regions are written as `iscrowd: 1`, and
grounding records keep `caption` and per-box `tokens_positive`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.records import DetectionDataset, DetectionRecord


def _categories(dataset: DetectionDataset) -> list[dict]:
    vocabulary = dataset.vocabulary
    if not len(vocabulary):
        # grounding-only data: MDETR files use one generic category
        return [{"id": 1, "name": "object", "supercategory": "object"}]
    categories = []
    for i, name in enumerate(vocabulary.names):
        category = {"id": i + 1, "name": name, "source_id": vocabulary.category_ids[i]}
        if vocabulary.synonyms:
            category["synonyms"] = [name, *vocabulary.synonyms[i]]
        if vocabulary.frequency:
            category["frequency"] = vocabulary.frequency[i]
        categories.append(category)
    return categories


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _annotations(record: DetectionRecord, image_id: int, num_classes: int, next_id: int) -> list[dict]:
    annotations = []
    areas = record.areas if record.areas is not None else [None] * len(record.boxes)
    ignore_areas = record.ignore_areas if record.ignore_areas is not None else [None] * len(record.ignore_boxes)
    for box, label, area in zip(record.boxes, record.labels, areas):
        if record.is_grounding:
            extra = {"category_id": 1, "tokens_positive": [list(s) for s in record.phrase_spans[label]],
                     "phrase": record.phrases[label]}
        elif 0 <= label < num_classes:
            extra = {"category_id": int(label) + 1}
        else:
            raise DatasetFormatError(f"{record.image_path}: label {int(label)} is outside the {num_classes} "
                                     f"classes; run `cl-detect data check` and fix the source annotations")
        annotations.append(_annotation(box, area, image_id, next_id + len(annotations), 0, extra))
    for box, label, area in zip(record.ignore_boxes, record.ignore_labels, ignore_areas):
        # an ignore region of unknown class gets category 0, which the reader maps back to -1
        category = 1 if record.is_grounding else int(label) + 1 if 0 <= label < num_classes else 0
        annotations.append(_annotation(box, area, image_id, next_id + len(annotations), 1, {"category_id": category}))
    return annotations


def _annotation(box, area, image_id: int, annotation_id: int, iscrowd: int, extra: dict) -> dict:
    """One COCO annotation; `area` is the source's (None or NaN: the box area stands in)."""
    xywh = _xywh(box)
    if area is None or not np.isfinite(area):
        area = max(xywh[2], 0) * max(xywh[3], 0)
    return {"id": annotation_id, "image_id": image_id, "bbox": xywh, "area": float(area), "iscrowd": iscrowd, **extra}


def coco_dict(dataset: DetectionDataset, out_dir: Path, image_root: Path) -> dict:
    """The COCO dict `write_coco_json` writes (file names relative to `image_root`).

    Raises:
        DatasetFormatError: the dataset mixes detection and grounding records, which one COCO
            file cannot hold (a grounding box would read back as class 1 of the detection classes).
    """
    kinds = {record.is_grounding for record in dataset.records}
    if len(kinds) > 1:
        grounding = sum(record.is_grounding for record in dataset.records)
        raise DatasetFormatError(
            f"{dataset.source}: {grounding} grounding and {len(dataset.records) - grounding} detection records; one "
            f"COCO file holds one kind (grounding boxes would read back as a detection class); write them as two "
            f"files (e.g. split the source by kind first)")
    ids = [r.image_id for r in dataset.records]
    keep_ids = len(set(ids)) == len(ids)
    index_of = dataset.vocabulary.index_of_category_id()
    images, annotations = [], []
    for n, record in enumerate(dataset.records):
        image_id = record.image_id if keep_ids else n + 1
        image = {"id": image_id, "file_name": Path(os.path.relpath(record.image_path, image_root)).as_posix(),
                 "width": int(record.width), "height": int(record.height)}
        if record.caption is not None:
            image["caption"] = record.caption
        if record.neg_category_ids or record.not_exhaustive_category_ids:
            # LVIS lists refer to category ids, which are renumbered 1..K here
            image["neg_category_ids"] = [index_of[c] + 1 for c in record.neg_category_ids if c in index_of]
            image["not_exhaustive_category_ids"] = [
                index_of[c] + 1 for c in record.not_exhaustive_category_ids if c in index_of]
        images.append(image)
        annotations += _annotations(record, image_id, len(dataset.vocabulary), len(annotations) + 1)
    root = Path(os.path.relpath(image_root, out_dir)).as_posix()
    return {"info": {"description": f"written by cl_detect from {dataset.source}", "image_root": root},
            "images": images, "annotations": annotations, "categories": _categories(dataset)}


def write_coco_json(dataset: DetectionDataset, out_path: str | Path, image_root: str | Path | None = None) -> Path:
    """Write a dataset as COCO json.

    Args:
        dataset: records + vocabulary (detection or grounding).
        out_path: the json file to write (folders are created).
        image_root: folder the written `file_name`s are relative to; default the dataset's
            `image_root`, else the images' common folder.

    Returns:
        The path written.
    """
    out_path = Path(out_path)
    if image_root is None:
        folders = [os.path.dirname(os.path.abspath(r.image_path)) for r in dataset.records]
        image_root = dataset.image_root or (os.path.commonpath(folders) if folders else out_path.parent)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = coco_dict(dataset, out_path.parent.absolute(), Path(image_root).absolute())
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return out_path
