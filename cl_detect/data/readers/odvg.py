"""ODVG jsonl (Grounding DINO's format): one json object per line per image.

Detection lines: `{"filename", "width", "height", "detection": {"instances":
[{"bbox": [x1, y1, x2, y2], "label": int, "category": str}]}}`, with class names
from a label map json (`{"0": "person", ...}`) or from the `category` fields.
Grounding lines: `{"grounding": {"caption": str, "regions": [{"bbox": xyxy,
"phrase": str, "tokens_positive": [[s, e]]}]}}`. Boxes are already xyxy pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers._common import image_size, load_json
from cl_detect.data.readers.grounding import grounding_record, normalize_spans
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary


def _read_lines(path: Path) -> list[dict]:
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DatasetFormatError(f"{path}:{number}: not valid json ({error}); "
                                             f"ODVG files hold one json object per line") from error
    return entries


def _vocabulary(entries: list[dict], label_map: dict | None, path: Path) -> tuple[Vocabulary, dict[int, int]]:
    """Vocabulary (ids = ODVG labels, in label order) and label id -> index."""
    if label_map is None:
        label_map = {}
        for entry in entries:
            for instance in entry.get("detection", {}).get("instances", []):
                if "category" not in instance:
                    raise DatasetFormatError(f"{path}: {entry.get('filename')} has an instance without 'category' "
                                             f"and no label map was given; pass label_map=<label_map.json>")
                label_map.setdefault(int(instance["label"]), instance["category"])
    ids = sorted(int(k) for k in label_map)
    names = tuple(str(label_map[k] if k in label_map else label_map[str(k)]) for k in ids)
    return Vocabulary(names, category_ids=ids), {cid: i for i, cid in enumerate(ids)}


def _region_spans(region: dict, caption: str, where: str) -> tuple[tuple[int, int], ...]:
    """A region's spans; regions that give only `phrase` are located in the caption."""
    if region.get("tokens_positive"):
        return normalize_spans(region["tokens_positive"], where)
    start = caption.find(region.get("phrase", "")) if region.get("phrase") else -1
    if start < 0:
        raise DatasetFormatError(f"{where}: region {region.get('bbox')} has no tokens_positive and its phrase "
                                 f"{region.get('phrase')!r} is not in the caption; add tokens_positive spans")
    return ((start, start + len(region["phrase"])),)


def _size(entry: dict, path: Path, where: str) -> tuple[int, int]:
    if "width" in entry and "height" in entry:
        return int(entry["width"]), int(entry["height"])
    try:
        return image_size(path)
    except OSError as error:
        raise DatasetFormatError(f"{where}: no width/height and {path} cannot be opened; add them") from error


def read_odvg(src: str | Path, image_root: str | Path | None = None,
              label_map: str | Path | dict | None = None) -> DetectionDataset:
    """Read an ODVG jsonl file (detection or grounding lines, or both).

    Args:
        src: the .jsonl file.
        image_root: folder the `filename`s are relative to (default: the file's folder).
        label_map: detection only: {label id: name} dict or json file; default: a single
            `*label_map*.json` beside the file, else the `category` of the instances.

    Returns:
        The dataset; grounding lines give records with `phrases`, detection lines index
        the vocabulary.
    """
    src = Path(src)
    entries = _read_lines(src)
    image_root = Path(image_root) if image_root is not None else src.parent
    if label_map is None:
        beside = sorted(src.parent.glob("*label_map*.json"))
        label_map = beside[0] if len(beside) == 1 else None
    if isinstance(label_map, (str, Path)):
        label_map = load_json(label_map)
    has_detection = any("detection" in entry for entry in entries)
    vocabulary, index_of = _vocabulary(entries, label_map, src) if has_detection else (Vocabulary(()), {})
    records = []
    for number, entry in enumerate(entries, 1):
        where = f"{src}:{number} ({entry.get('filename')})"
        if "filename" not in entry:
            raise DatasetFormatError(f"{where}: no 'filename'; every ODVG line names its image")
        path = image_root / entry["filename"]
        width, height = _size(entry, path, where)
        if "grounding" in entry:
            regions = entry["grounding"].get("regions", [])
            records.append(grounding_record(
                str(path), width, height, entry["grounding"].get("caption", ""),
                [[float(v) for v in region["bbox"]] for region in regions],
                [_region_spans(region, entry["grounding"].get("caption", ""), where) for region in regions],
                number - 1))
            continue
        instances = entry.get("detection", {}).get("instances", [])
        records.append(DetectionRecord(
            str(path), width, height, np.array([inst["bbox"] for inst in instances], np.float32),
            np.array([index_of.get(int(inst["label"]), -1) for inst in instances], np.int64), image_id=number - 1))
    return DetectionDataset(records, vocabulary, source=str(src), image_root=str(image_root))
