"""LVIS json -> DetectionDataset, and the LVIS category list as a Vocabulary.

LVIS is COCO-shaped; what matters on top is kept: per-image
`neg_category_ids` and `not_exhaustive_category_ids` (the federated evaluation
needs them), category synonyms and r/c/f frequency. LVIS v1 image entries have
no `file_name`; the file is named by `coco_url` (`val2017/000000397133.jpg`).
"""
from __future__ import annotations

from pathlib import Path

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers._common import load_json
from cl_detect.data.readers.coco import find_image_root, records_from_coco, vocabulary_from_categories
from cl_detect.data.records import DetectionDataset, Vocabulary

LVIS_V1_META = "lvis_v1_meta/datasets/metadata/lvis_v1_train_cat_info.json"


def is_lvis_json(data: dict) -> bool:
    """True when image entries carry LVIS's federated fields or categories carry frequencies."""
    images, categories = data.get("images", []), data.get("categories", [])
    return bool(images and "neg_category_ids" in images[0]) or bool(categories and "frequency" in categories[0])


def _file_names(images: list[dict], image_root: Path | None, json_path: Path) -> list[str]:
    """`split/name.jpg` from coco_url, or just `name.jpg` when the root already is the split folder."""
    with_split = [("/".join(im["coco_url"].split("/")[-2:]) if "coco_url" in im else im.get("file_name", ""))
                  for im in images]
    if image_root is None:
        return with_split
    flat = [name.split("/")[-1] for name in with_split]
    probes = range(min(3, len(images)))
    if not any((image_root / with_split[i]).is_file() for i in probes) and any(
            (image_root / flat[i]).is_file() for i in probes):
        return flat
    return with_split


def records_from_lvis(data: dict, json_path: str | Path, image_root: str | Path | None = None) -> DetectionDataset:
    """Build records from an already loaded LVIS dict (see `read_lvis`)."""
    json_path = Path(json_path)
    images = data.get("images", [])
    if image_root is None:
        recorded = (data.get("info") or {}).get("image_root", "")
        image_root = find_image_root(json_path, _file_names(images, None, json_path), recorded)
    image_root = Path(image_root)
    names = _file_names(images, image_root, json_path)
    data = dict(data, images=[dict(image, file_name=name) for image, name in zip(images, names)])
    return records_from_coco(data, json_path, image_root)


def read_lvis(src: str | Path, image_root: str | Path | None = None) -> DetectionDataset:
    """Read an LVIS json (v0.5 or v1).

    Args:
        src: the json file.
        image_root: the COCO image folder (holding `train2017/`, `val2017/`) or a split folder.

    Returns:
        The dataset; the vocabulary keeps LVIS ids, synonyms and frequency, records keep
        `neg_category_ids` and `not_exhaustive_category_ids`.
    """
    return records_from_lvis(load_json(src), src, image_root)


def load_lvis_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """LVIS categories (id order) with synonyms and r/c/f frequency.

    Args:
        path: a category-info json list (Detic's `lvis_v1_train_cat_info.json`) or a full
            LVIS json; default: the LVIS v1 list in the shared data folder.

    Returns:
        A Vocabulary of 1203 classes for LVIS v1.
    """
    if path is None:
        from cl_detect._shared import shared_dir

        shared = shared_dir()
        if shared is None:
            raise DatasetFormatError("no LVIS category file given and no shared data folder found; "
                                     "pass the path of lvis_v1_train_cat_info.json or an LVIS json")
        path = shared / "data" / LVIS_V1_META
    data = load_json(path)
    categories = data["categories"] if isinstance(data, dict) else data
    return vocabulary_from_categories(sorted(categories, key=lambda c: c["id"]))
