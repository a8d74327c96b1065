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
    """The file's json objects; null `detection` / `grounding` / `caption` / lists read as absent."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetFormatError(f"{path}:{number}: not valid json ({error}); "
                                             f"ODVG files hold one json object per line") from error
                if not isinstance(entry, dict):
                    raise DatasetFormatError(f"{path}:{number}: {line.strip()[:80]} is not a json object; ODVG "
                                             f"lines are {{\"filename\": ..., \"detection\" or \"grounding\": ...}}")
                entries.append(_without_nulls(entry))
    return entries


def _without_nulls(entry: dict) -> dict:
    """The line without its null fields (and null `instances`, `caption`, `regions`), read as absent."""
    entry = {key: value for key, value in entry.items() if value is not None}
    for part in ("detection", "grounding"):
        if isinstance(entry.get(part), dict):
            entry[part] = {key: value for key, value in entry[part].items() if value is not None}
    return entry


def _box(item: dict, where: str) -> list[float]:
    """An instance's or region's `bbox`: four numbers, x1 y1 x2 y2 in pixels."""
    bbox = item.get("bbox")
    try:
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise TypeError
        return [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where}: an instance or region has bbox {bbox!r}; every ODVG instance and "
                                 f"region needs 'bbox': [x1, y1, x2, y2], four numbers in pixels") from None


def _label(instance: dict, where: str) -> int:
    """An instance's integer `label` (the label map's key for its class)."""
    label = instance.get("label")
    if isinstance(label, int) and not isinstance(label, bool):
        return label
    if isinstance(label, float) and label.is_integer():
        return int(label)
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():  # "3", as label map keys are written
        return int(label)
    raise DatasetFormatError(f"{where}: instance {instance.get('bbox')} (category {instance.get('category')!r}) "
                             f"has label {label!r}; ODVG instances need an integer 'label', the key of their class "
                             f"in the label map")


def _vocabulary(entries: list[dict], label_map: dict | None, path: Path) -> tuple[Vocabulary, dict[int, int]]:
    """Vocabulary (ids = ODVG labels, in label order) and label id -> index."""
    if label_map is None:
        label_map = {}
        for number, entry in enumerate(entries, 1):
            for instance in entry.get("detection", {}).get("instances", []):
                if "category" not in instance:
                    raise DatasetFormatError(f"{path}: {entry.get('filename')} has an instance without 'category' "
                                             f"and no label map was given; pass label_map=<label_map.json>")
                label_map.setdefault(_label(instance, f"{path}:{number} ({entry.get('filename')})"),
                                     instance["category"])
    try:
        ids = sorted(int(k) for k in label_map)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{path}: label map keys {list(label_map)[:5]} are not all integer labels; write it "
                                 f"as {{\"0\": \"person\", \"1\": \"car\"}} (label -> class name)") from None
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
    """(width, height) from the line, else from the image file's header."""
    if "width" in entry and "height" in entry:
        try:
            return int(entry["width"]), int(entry["height"])
        except (TypeError, ValueError):
            raise DatasetFormatError(f"{where}: width {entry['width']!r} and height {entry['height']!r}; write them "
                                     f"as integers (pixels) or leave both out (then read from the image)") from None
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
                [_box(region, where) for region in regions],
                [_region_spans(region, entry["grounding"].get("caption", ""), where) for region in regions],
                number - 1))
            continue
        instances = entry.get("detection", {}).get("instances", [])
        records.append(DetectionRecord(
            str(path), width, height, np.array([_box(inst, where) for inst in instances], np.float32),
            np.array([index_of.get(_label(inst, where), -1) for inst in instances], np.int64), image_id=number - 1))
    return DetectionDataset(records, vocabulary, source=str(src), image_root=str(image_root))
