"""Readers: every annotation format -> one `DetectionDataset`.

`read_dataset(src)` picks the reader from the file type (and, for json, from
its content); pass `format=` to force one. Readers keep questionable records
(boxes outside the image, unknown classes with label -1, missing images) so
the dataset doctor can report them; they raise `DatasetFormatError` only when
reading is impossible.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers._common import load_json, merge_datasets
from cl_detect.data.readers.coco import annotation_jsons, is_annotation_json, read_coco, records_from_coco
from cl_detect.data.readers.grounding import is_grounding_json, read_grounding, records_from_grounding
from cl_detect.data.readers.lvis import is_lvis_json, load_lvis_vocabulary, read_lvis, records_from_lvis
from cl_detect.data.readers.odvg import read_odvg
from cl_detect.data.readers.voc import read_voc
from cl_detect.data.readers.yolo import class_list_file, read_yolo
from cl_detect.data.records import DetectionDataset

FORMATS = ("coco", "lvis", "grounding", "yolo", "voc", "odvg")
_JSON_READERS = {"coco": records_from_coco, "lvis": records_from_lvis, "grounding": records_from_grounding}
# the keyword options each reader takes
_OPTIONS = {"coco": {"image_root"}, "lvis": {"image_root"}, "grounding": {"image_root"},
            "odvg": {"image_root", "label_map"}, "yolo": set(), "voc": {"class_names"}}

__all__ = ["FORMATS", "read_dataset", "detect_format", "read_coco", "read_lvis", "read_grounding", "read_odvg",
           "read_voc", "read_yolo", "load_lvis_vocabulary"]


def json_format(data, path: str | Path) -> str:
    """'lvis', 'grounding' or 'coco' for a loaded annotation dict; `path` is the file, named in errors."""
    if not is_annotation_json(data):
        raise DatasetFormatError(f"{path}: json has no 'images' list, so it is not a COCO/LVIS/grounding "
                                 f"annotation file; pass the annotation json (e.g. instances_val2017.json)")
    if is_grounding_json(data):
        return "grounding"
    return "lvis" if is_lvis_json(data) else "coco"


def _annotation_json(path: Path) -> dict:
    """The loaded annotation file; a json without an 'images' list is refused even when `format=` is given."""
    data = load_json(path)
    json_format(data, path)
    return data


def detect_format(src: str | Path, split: str | None = None) -> str:
    """Guess the format of a file or folder.

    Args:
        src: an annotation file (.json, .jsonl, .yaml) or a dataset folder.
        split: in a folder of jsons, the split whose annotation file decides (None: the first).

    Returns:
        One of FORMATS.
    """
    return _guess_format(Path(src), split)[0]


def _guess_format(src: Path, split: str | None) -> tuple[str, Iterator[tuple[Path, dict]] | None]:
    """`detect_format`'s answer, with the annotation jsons it parsed to decide (None when it parsed none).

    The (path, loaded dict) iterator starts with the file already parsed, so a reader goes on
    from it instead of parsing that file a second time.
    """
    if not src.exists():
        raise DatasetFormatError(f"{src} does not exist; pass an annotation file or a dataset folder")
    if src.is_file():
        suffix = src.suffix.lower()
        if suffix == ".jsonl":
            return "odvg", None
        if suffix in (".yaml", ".yml"):
            return "yolo", None
        if suffix == ".json":
            data = load_json(src)
            return json_format(data, src), iter([(src, data)])
        raise DatasetFormatError(f"{src}: cannot tell the format from the suffix {suffix!r}; pass format=...")
    if any(src.glob("*.yaml")) or any(src.glob("*/*.yaml")):
        return "yolo", None
    if (src / "Annotations").is_dir() or any(src.glob("*.xml")) or any(src.glob("annotations/*.xml")):
        return "voc", None
    if any(src.glob("*.jsonl")):
        return "odvg", None
    jsons = annotation_jsons(src, split)
    try:
        path, data = next(jsons)  # the first annotation file decides
    except DatasetFormatError:
        if class_list_file(src) is None:
            raise
        return "yolo", None  # YOLO labels with a classes.txt but no yaml: the YOLO reader says what to write
    return json_format(data, path), itertools.chain([(path, data)], jsons)


def read_dataset(src: str | Path, format: str | None = None, split: str | None = None, **kwargs) -> DetectionDataset:
    """Read any supported dataset into records.

    Args:
        src: annotation file or dataset folder.
        format: one of FORMATS; None guesses it (`detect_format`).
        split: the split to read (YOLO train/val/test, VOC ImageSets name, COCO
            `instances_<split>` in a folder); None reads everything.
        **kwargs: passed to the reader (`image_root`, `class_names`, `label_map`); one the format does
            not take (e.g. `image_root` for YOLO) is refused, naming `src`; None means the reader's default.

    Returns:
        The dataset.
    """
    src = Path(src)
    loaded = None
    if format is None:  # a json parsed to guess the format is read from there, not parsed again
        format, loaded = _guess_format(src, split)
    if format not in FORMATS:
        raise DatasetFormatError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if kwargs.get("class_names") is not None and format != "voc":
        raise DatasetFormatError(f"{src}: class_names applies to VOC data only; {format} files store their own "
                                 f"class list (rename classes with prompts instead)")
    kwargs = {key: value for key, value in kwargs.items() if value is not None}  # None: the reader's default
    unused = sorted(key for key in kwargs if key not in _OPTIONS[format])
    if unused:  # the reader would raise a TypeError naming no dataset, or ignore it silently
        raise DatasetFormatError(
            f"{src}: {', '.join(unused)} does not apply to {format} data, which takes "
            f"{', '.join(sorted(_OPTIONS[format])) or 'none'} (YOLO finds its images through the yaml, VOC beside "
            f"the xml files); remove it")
    if format == "yolo":
        return read_yolo(src, split=split, **kwargs)
    if format == "voc":
        return read_voc(src, split=split, **kwargs)
    if format == "odvg":
        files = sorted(src.glob("*.jsonl")) if src.is_dir() else [src]
        datasets = [read_odvg(path, **kwargs) for path in files]
        return datasets[0] if len(datasets) == 1 else merge_datasets(datasets, str(src))
    if loaded is None:
        loaded = annotation_jsons(src, split) if src.is_dir() else [(src, _annotation_json(src))]
    datasets = [_JSON_READERS[format](data, path, kwargs.get("image_root")) for path, data in loaded]
    return datasets[0] if len(datasets) == 1 else merge_datasets(datasets, str(src))
