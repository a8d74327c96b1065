"""Pack a dataset: resized JPEGs + a COCO json with the boxes scaled to match.

Used to carry a subset of real data to a remote GPU machine with a size limit
(the device here accepts 64 MiB per command). Images keep their path relative
to the dataset's image root, so splits with equal file names do not collide.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2

from cl_detect.data.errors import DatasetError
from cl_detect.data.preprocess import load_image_bgr
from cl_detect.data.records import DetectionDataset, DetectionRecord
from cl_detect.data.writers import coco_dict, write_coco_json


def _relative_jpeg_name(record: DetectionRecord, image_root: str, taken: set[str]) -> str:
    relative = os.path.relpath(os.path.abspath(record.image_path), os.path.abspath(image_root)) if image_root else ""
    if not relative or relative.startswith(".."):
        relative = os.path.basename(record.image_path)
    name = str(Path(relative).with_suffix(".jpg"))
    stem, n = name[:-4], 1
    while name in taken:
        name, n = f"{stem}_{n}.jpg", n + 1
    taken.add(name)
    return name


def pack_record(record: DetectionRecord, out_path: Path, max_side: int, quality: int) -> DetectionRecord:
    """Resize one image so its longer side is at most `max_side`, save it, scale its boxes."""
    image = load_image_bgr(record.image_path)
    height, width = image.shape[:2]
    if (width, height) != (record.width, record.height):
        raise DatasetError(f"{record.image_path}: image is {width}x{height} but annotated as "
                           f"{record.width}x{record.height}; run `cl-detect data check` and fix the annotation")
    ratio = min(1.0, max_side / max(width, height))
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_path), image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    scale = [new_w / width, new_h / height] * 2
    area_scale = scale[0] * scale[1]
    return replace(record, image_path=str(out_path), width=new_w, height=new_h,
                   boxes=record.boxes * scale, ignore_boxes=record.ignore_boxes * scale,
                   areas=None if record.areas is None else record.areas * area_scale,
                   ignore_areas=None if record.ignore_areas is None else record.ignore_areas * area_scale)


def pack_dataset(dataset: DetectionDataset, out_dir: str | Path, max_side: int = 640, limit: int | None = None,
                 quality: int = 90) -> tuple[DetectionDataset, Path]:
    """Write resized images under `out_dir/images` and `out_dir/annotations.json`.

    Args:
        dataset: what to pack.
        out_dir: output folder.
        max_side: longer image side after packing (smaller images are not enlarged).
        limit: pack only the first `limit` records.
        quality: JPEG quality.

    Returns:
        The packed dataset and the json path.
    """
    # 0 or a negative size would shrink every image to 1 x 1, and a negative limit slice off the last records
    if max_side < 1:
        raise ValueError(f"max_side (--max-side) must be a positive number of pixels, got {max_side}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit (--limit) must be a positive number of images, got {limit}; "
                         "leave it out to pack them all")
    if not 0 <= quality <= 100:
        raise ValueError(f"quality (--quality) must be a JPEG quality from 0 to 100, got {quality}")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    # what the json cannot hold (a label outside the classes, grounding mixed with detection) fails
    # before any image is written, not after a folder of them
    coco_dict(DetectionDataset(dataset.records[:limit], dataset.vocabulary, source=dataset.source),
              out_dir.absolute(), image_dir.absolute())
    taken: set[str] = set()
    records = [pack_record(record, image_dir / _relative_jpeg_name(record, dataset.image_root, taken),
                           max_side, quality)
               for record in dataset.records[:limit]]
    packed = DetectionDataset(records, dataset.vocabulary, source=dataset.source, image_root=str(image_dir))
    return packed, write_coco_json(packed, out_dir / "annotations.json", image_dir)
