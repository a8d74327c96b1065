"""COCO instances json -> DetectionDataset.

Boxes are converted from xywh to xyxy pixels, crowd boxes become
`ignore_boxes`, and the original category ids (1..90 for COCO) are kept in the
vocabulary so evaluation can map labels back. Annotations whose category id is
not in `categories` are kept with label -1 so the doctor can report them.
Image ids must be distinct integers; anything else is refused, since boxes are
attached to images by id.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers._common import image_size, load_json, merge_datasets
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary

logger = logging.getLogger(__name__)


def vocabulary_from_categories(categories: list[dict], json_path: str | Path = "") -> Vocabulary:
    """Vocabulary in the order of the `categories` list, keeping ids, synonyms and frequency.

    Raises:
        DatasetFormatError: a category without a name or an integer id (`json_path` is named).
    """
    ids = [_category_id(category, number, json_path) for number, category in enumerate(categories)]
    names = tuple(str(c["name"]) for c in categories)
    has_synonyms = any("synonyms" in c for c in categories)
    synonyms = tuple(tuple(s for s in c.get("synonyms", ()) if s != c["name"]) for c in categories)
    frequency = tuple(c.get("frequency", "") for c in categories) if any("frequency" in c for c in categories) else ()
    return Vocabulary(names, synonyms if has_synonyms else (), tuple(ids), frequency)


def _category_id(category: dict, number: int, json_path: str | Path) -> int:
    """The category's id; a category without an integer id or a name cannot be named by annotations."""
    if isinstance(category, dict) and "name" in category:
        number_id = _integer_id(category.get("id"))  # 1.5 was truncated to 1, "2" parsed: other classes' ids
        if number_id is not None:
            return number_id
    raise DatasetFormatError(
        f"{json_path}: categories[{number}] is {category!r}; every category needs an integer 'id' and a 'name' "
        f"(annotations name their class by that id); add the missing key")


def find_image_root(json_path: Path, file_names: list[str], recorded_root: str = "") -> Path:
    """Guess the folder that image `file_name`s are relative to.

    Tries, in order: a root recorded in the json by `write_coco_json`, the json's
    folder, `images/` or `data/` beside it (FiftyOne writes `labels.json` + `data/`),
    and the split folder beside an `annotations/` folder
    (`annotations/instances_val2017.json` -> `../val2017`).
    """
    json_dir = json_path.parent
    split = json_path.stem.split("_")[-1]
    candidates = [json_dir / recorded_root] if recorded_root else []
    candidates += [json_dir, json_dir / "images", json_dir / "data", json_dir / split, json_dir.parent / split,
                   json_dir.parent / "images" / split, json_dir.parent / "images", json_dir.parent]
    probes = [name for name in file_names if isinstance(name, str) and name][:3]  # others are refused later
    for folder in candidates:
        if any((folder / name).is_file() for name in probes):
            return folder
    return candidates[0]


def box_xyxy(annotation: dict, json_path: Path) -> list[float]:
    """The annotation's `bbox` [x, y, w, h] as [x1, y1, x2, y2]; anything but four numbers is refused."""
    bbox = annotation.get("bbox")
    try:
        if not isinstance(bbox, (list, tuple)):
            raise TypeError
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):  # absent, not 4 values, or a value that is not a number
        raise DatasetFormatError(
            f"{json_path}: annotation id {annotation.get('id')} (image {annotation.get('image_id')}) has bbox "
            f"{bbox!r}; every annotation needs 'bbox': [x, y, width, height], four numbers") from None
    return [x, y, x + w, y + h]


def image_root_of(data: dict, json_path: Path, image_root: str | Path | None) -> Path:
    """The given image root, else the one recorded in the json's info, else `find_image_root`'s guess."""
    if image_root is not None:
        return Path(image_root)
    recorded = (data.get("info") or {}).get("image_root", "")
    return find_image_root(json_path, [im.get("file_name", "") for im in data.get("images", [])], recorded)


def _integer_id(value) -> int | None:
    """An image id as an int, or None when it is not a whole number (strings and booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_image_ids(images: list[dict], json_path: Path) -> None:
    """Every image needs its own integer id: annotations, evaluation and written detections key on it.

    Raises:
        DatasetFormatError: code 'invalid_image_id' for a missing or non-integer id (e.g. "img1"),
            'duplicate_image_id' when images share an id (each of their boxes would land on all of them).
    """
    files_of = defaultdict(list)
    for number, image in enumerate(images):
        if not isinstance(image, dict):
            raise DatasetFormatError(f"{json_path}: images[{number}] is {image!r}, not an object; each image entry "
                                     f"is {{\"id\": ..., \"file_name\": ..., \"width\": ..., \"height\": ...}}")
        image_id = _integer_id(image.get("id"))
        if image_id is None:
            raise DatasetFormatError(
                f"{json_path}: images[{number}] ({image.get('file_name')!r}) has id {image.get('id')!r}; COCO image "
                f"ids must be integers (evaluation and written detections use them as numbers); renumber the "
                f"images 1..N and set each annotation's image_id to its image's new id", code="invalid_image_id")
        files_of[image_id].append(str(image.get("file_name")))
    shared = {image_id: names for image_id, names in files_of.items() if len(names) > 1}
    if shared:
        examples = "; ".join(f"id {image_id}: {', '.join(names)}" for image_id, names in list(shared.items())[:5])
        raise DatasetFormatError(
            f"{json_path}: {len(shared)} image id(s) used by more than one image ({examples}); annotations name "
            f"their image by id, so these images would get each other's boxes; give every image its own id and "
            f"point each annotation's image_id at its image", code="duplicate_image_id")


def group_annotations(data: dict, json_path: Path) -> dict[int, list[dict]]:
    """Annotations per image id, after `check_image_ids`; an annotation for an unlisted image cannot be placed."""
    check_image_ids(data.get("images", []), json_path)
    image_ids = {image["id"] for image in data.get("images", [])}
    per_image = defaultdict(list)
    for number, annotation in enumerate(data.get("annotations") or []):
        if not isinstance(annotation, dict):
            raise DatasetFormatError(f"{json_path}: annotations[{number}] is {annotation!r}, not an object; each "
                                     f"annotation is {{\"image_id\": ..., \"category_id\": ..., \"bbox\": ...}}")
        if annotation.get("image_id") not in image_ids:
            raise DatasetFormatError(
                f"{json_path}: annotation id {annotation.get('id')} refers to image_id {annotation.get('image_id')!r} "
                f"which is not in 'images'; add the image entry or remove the annotation", code="unknown_image_id")
        per_image[annotation["image_id"]].append(annotation)
    return per_image


def image_path_of(image: dict, image_root: Path, json_path: Path) -> Path:
    """The image entry's file under `image_root`; an entry without a `file_name` string is refused."""
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        raise DatasetFormatError(
            f"{json_path}: image id {image['id']} has file_name {image.get('file_name')!r}; every image entry "
            f"needs its file's path relative to the image root as 'file_name'")
    return image_root / image["file_name"]


def image_record_size(image: dict, path: Path, json_path: Path) -> tuple[int, int]:
    """(width, height) from the image entry, or from the file header when the entry lacks them."""
    if image.get("width") is not None and image.get("height") is not None:
        try:
            return int(image["width"]), int(image["height"])
        except (TypeError, ValueError):
            raise DatasetFormatError(
                f"{json_path}: image id {image['id']} ({image.get('file_name')!r}) has width {image['width']!r} and "
                f"height {image['height']!r}; write them as integers (pixels) or remove both keys (the size is "
                f"then read from the file)") from None
    try:
        return image_size(path)
    except OSError as error:
        raise DatasetFormatError(
            f"{json_path}: image id {image['id']} has no width/height and {path} cannot be opened; "
            f"add width and height to the image entry") from error


def is_crowd(annotation: dict, json_path: Path) -> bool:
    """The annotation's `iscrowd` flag (absent: 0). Only 0 / 1 (or false / true) are accepted: a string
    such as "0" is truthy, so the box would silently become an ignore region, here and in pycocotools."""
    flag = annotation.get("iscrowd", 0)
    if flag is None or (not isinstance(flag, str) and flag in (0, 1)):
        return bool(flag)
    raise DatasetFormatError(
        f"{json_path}: annotation id {annotation.get('id')} (image {annotation.get('image_id')}) has iscrowd "
        f"{flag!r}; write 0 (an object) or 1 (a crowd region, ignored in training and evaluation) as a number")


def _area(annotation: dict, json_path: Path) -> float:
    """The annotation's `area` (COCO: the segmentation's, used for small / medium / large), NaN if absent."""
    area = annotation.get("area")
    if area is None:
        return float("nan")
    try:
        return float(area)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{json_path}: annotation {annotation.get('id')} has area {area!r}, not a number; "
                                 f"fix it or remove the key (the box area is used then)") from None


def _warn_placeholder_category(data: dict, json_path: Path) -> None:
    """Roboflow's COCO exports start with a category named after the dataset that no box uses and that
    is every other category's supercategory (ODinW's `annotations_without_background.json` drops it).
    Read as it is, it becomes a class and a prompt that never gets a box: say so."""
    categories = data.get("categories") or []
    if len(categories) < 2 or not isinstance(categories[0], dict):
        return
    first, others = categories[0], categories[1:]
    used = {a.get("category_id") for a in data.get("annotations") or [] if isinstance(a, dict)}
    if first.get("id") not in used and all(isinstance(c, dict) and c.get("supercategory") == first.get("name")
                                           for c in others):
        logger.warning("%s: category %r (id %s) looks like Roboflow's placeholder: no box uses it and it is "
                       "every other category's supercategory, so it becomes a class and a prompt that never "
                       "gets a box; remove it from the json's categories (ODinW ships "
                       "annotations_without_background.json without it)", json_path, first.get("name"),
                       first.get("id"))


def records_from_coco(data: dict, json_path: str | Path, image_root: str | Path | None = None) -> DetectionDataset:
    """Build records from an already loaded COCO dict (see `read_coco`)."""
    json_path = Path(json_path)
    images = data.get("images", [])
    vocabulary = vocabulary_from_categories(data.get("categories") or [], json_path)
    index_of = vocabulary.index_of_category_id()
    per_image = group_annotations(data, json_path)
    image_root = image_root_of(data, json_path, image_root)
    _warn_placeholder_category(data, json_path)
    records = []
    for image in images:
        path = image_path_of(image, image_root, json_path)
        width, height = image_record_size(image, path, json_path)
        boxes, labels, areas, ignore, ignore_labels, ignore_areas = [], [], [], [], [], []
        for annotation in per_image.get(image["id"], []):
            box = box_xyxy(annotation, json_path)
            if isinstance(annotation.get("category_id"), str):  # "1" matches no category: all boxes unknown
                raise DatasetFormatError(
                    f"{json_path}: annotation {annotation.get('id')!r} has category_id "
                    f"{annotation['category_id']!r}, a string; write the category's integer id (1, not \"1\")")
            label = index_of.get(annotation.get("category_id"), -1)
            area = _area(annotation, json_path)
            if is_crowd(annotation, json_path):
                ignore.append(box)
                ignore_labels.append(label)
                ignore_areas.append(area)
            else:
                boxes.append(box)
                labels.append(label)
                areas.append(area)
        records.append(DetectionRecord(
            str(path), width, height, np.array(boxes, np.float32), np.array(labels, np.int64),
            image_id=int(image["id"]), ignore_boxes=np.array(ignore, np.float32),
            ignore_labels=np.array(ignore_labels, np.int64), areas=areas, ignore_areas=ignore_areas,
            neg_category_ids=tuple(image.get("neg_category_ids") or ()),
            not_exhaustive_category_ids=tuple(image.get("not_exhaustive_category_ids") or ())))
    return DetectionDataset(records, vocabulary, source=str(json_path), image_root=str(image_root))


def find_coco_jsons(folder: Path, split: str | None) -> list[Path]:
    """Instance jsons under `folder` (two levels deep), for the tiny_coco / COCO layout and Roboflow's
    `<split>/_annotations.coco.json`."""
    found = sorted(p for pattern in ("*.json", "*/*.json", "*/*/*.json") for p in folder.glob(pattern))
    instances = [p for p in found if p.stem.startswith("instances_")] or found
    if split is not None:  # instances_val2017.json, or a Roboflow export's valid/_annotations.coco.json
        instances = [p for p in instances if p.stem.split("_")[-1].startswith(split) or p.stem == split
                     or (p.parent != folder and p.parent.name.startswith(split))]
    if not instances:
        raise DatasetFormatError(
            f"{folder}: no COCO json found{' for split ' + repr(split) if split else ''}; "
            f"pass the json file itself, e.g. annotations/instances_val2017.json")
    return instances


def is_annotation_json(data) -> bool:
    """True for a loaded json with an 'images' list: a COCO, LVIS or grounding annotation file."""
    return isinstance(data, dict) and isinstance(data.get("images"), list)


def annotation_jsons(folder: Path, split: str | None) -> Iterator[tuple[Path, dict]]:
    """(path, loaded dict) of each annotation json `find_coco_jsons` lists, loaded one at a time.

    Other jsons beside them (e.g. LVIS's coco_to_synset.json, a class map) are skipped, and
    named in one warning once all files are read.

    Raises:
        DatasetFormatError: when none of the jsons is an annotation file.
    """
    found, skipped = False, []
    for path in find_coco_jsons(folder, split):
        data = load_json(path)
        if is_annotation_json(data):
            found = True
            yield path, data
        else:
            skipped.append(path.name)
    if not found:
        raise DatasetFormatError(
            f"{folder}: none of its jsons ({', '.join(skipped)}) has an 'images' list, so none is a COCO/LVIS/"
            f"grounding annotation file; pass the annotation json itself, e.g. annotations/instances_val2017.json")
    if skipped:
        logger.warning("%s: skipped %d json file(s) that are not annotation files (no 'images' list): %s",
                       folder, len(skipped), ", ".join(skipped))


def read_coco(src: str | Path, split: str | None = None, image_root: str | Path | None = None) -> DetectionDataset:
    """Read a COCO instances json, or a folder holding `annotations/instances_<split>.json`.

    Args:
        src: the json file, or a folder (all splits are merged when `split` is None).
        split: for a folder, which `instances_<split>*.json` to read ('val' matches val2017).
        image_root: folder the image `file_name`s are relative to (default: guessed, see
            `find_image_root`).

    Returns:
        The dataset; crowd boxes are in each record's `ignore_boxes`.
    """
    src = Path(src)
    if src.is_dir():
        datasets = [records_from_coco(data, path, image_root) for path, data in annotation_jsons(src, split)]
        return datasets[0] if len(datasets) == 1 else merge_datasets(datasets, str(src))
    return records_from_coco(load_json(src), src, image_root)
