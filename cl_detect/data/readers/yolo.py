"""YOLO txt labels + data.yaml (Ultralytics and Roboflow layouts) -> DetectionDataset.

Labels are `class cx cy w h` normalised to [0, 1] (or `class x1 y1 x2 y2 ...`
polygons, turned into their bounding box; in a pose dataset, whose yaml has
`kpt_shape`, the box followed by keypoints); they become xyxy pixels using the
image size read from the file header. Image folders are found the way users'
yaml files actually point at them: `path:` + relative entries, Roboflow's
`../train/images` (relative to a folder one level up), and absolute paths from
another machine (`/mnt/data/train/images`), which are rewritten relative to
the yaml's folder. A split is an image folder (subfolders included) or a .txt
list of images; each image's labels are in its folder with `images` replaced by
`labels`. Empty or missing label files mean images without boxes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import yaml

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers._common import IMAGE_SUFFIXES, image_size, list_images, merge_datasets
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary

logger = logging.getLogger(__name__)

SPLIT_KEYS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def load_config(yaml_path: Path, strict: bool = True) -> dict | None:
    """The yaml's mapping; with `strict`, a file that is not valid YAML or not a mapping is refused
    naming the file, else None comes back for it (a folder may hold other yaml files)."""
    try:
        with open(yaml_path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        if not strict:
            return None
        raise DatasetFormatError(f"{yaml_path}: not valid YAML ({error}); fix the file (YAML indents with "
                                 f"spaces, never tabs)") from None
    if isinstance(config, dict):
        return config
    if strict:
        held = "nothing" if config is None else f"the {type(config).__name__} {str(config)[:60]!r}"
        raise DatasetFormatError(f"{yaml_path}: holds {held}, not a mapping; a YOLO dataset yaml has keys "
                                 f"such as train:, val: and names:")
    return None


def find_yaml(folder: Path) -> Path:
    """The dataset yaml in `folder` or one level below (data.yaml, config.yaml, any yaml with `names`)."""
    found = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*/*.yaml")) + sorted(folder.glob("*.yml"))
    preferred = [p for p in found if p.name in ("data.yaml", "config.yaml")]
    for path in preferred + found:
        config = load_config(path, strict=False)
        if config is not None and "names" in config:
            return path
    class_list = class_list_file(folder)
    if class_list is not None:
        names = [line.strip() for line in class_list.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        raise DatasetFormatError(
            f"{folder}: YOLO labels with the class list in {class_list.name} (as LabelImg and CVAT's YOLO 1.1 export "
            f"write them) but no data.yaml, which says where the images are; write {folder / 'data.yaml'} with "
            f"'train: <folder of the images>' and 'names: {names[:20]!r}' (one name per line of {class_list.name}, "
            f"in order)")
    raise DatasetFormatError(f"{folder}: no yaml with a 'names' entry found; pass the data.yaml path")


def class_list_file(folder: Path) -> Path | None:
    """A YOLO class list without a yaml (LabelImg's classes.txt, darknet / CVAT's obj.names), here or one
    level below, or None."""
    found = [p for name in ("classes.txt", "obj.names") for p in (*folder.glob(name), *folder.glob(f"*/{name}"))]
    return found[0] if found else None


def vocabulary_from_yaml(config: dict, yaml_path: Path) -> Vocabulary:
    """Class names from `names` (list, or dict {index: name}); a bare string or a non-string entry is refused."""
    names = config.get("names")
    if isinstance(names, str):
        raise DatasetFormatError(
            f"{yaml_path}: 'names' is the single string {names!r}, which would be read letter by letter "
            f"({', '.join(names[:6])}...); write names: [{names!r}] (a list, one entry per class)",
            code="names_as_string")
    if isinstance(names, dict):
        try:
            indices = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetFormatError(f"{yaml_path}: 'names' keys {list(names)[:10]} are not all class indices; "
                                     f"write names as {{0: first, 1: second, ...}} or as a list") from None
        if indices != list(range(len(indices))):
            raise DatasetFormatError(f"{yaml_path}: 'names' keys {indices[:10]}... are not 0..{len(indices) - 1}; "
                                     f"YOLO class indices must be contiguous from 0")
        names = [names[i] if i in names else names[str(i)] for i in indices]
    if not isinstance(names, list):
        raise DatasetFormatError(f"{yaml_path}: 'names' must be a list of class names, got {names!r}")
    if "nc" in config and _integer(config["nc"]) != len(names):
        raise DatasetFormatError(f"{yaml_path}: nc is {config['nc']} but 'names' lists {len(names)} classes; "
                                 f"make them agree", code="class_count_mismatch")
    _refuse_non_string_names(names, yaml_path)
    return Vocabulary(tuple(names))


def _integer(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _refuse_non_string_names(names: list, yaml_path: Path) -> None:
    """YAML turns unquoted yes/no/on/off into booleans and 1, 1.50, 010 into numbers: the prompt
    would be 'True' or '1.5' instead of what was written, so only strings are accepted."""
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise DatasetFormatError(
                f"{yaml_path}: 'names' entry {index} is {name!r} ({type(name).__name__}), not a string: YAML reads "
                f"unquoted yes/no/on/off/true/false as booleans, numbers as numbers and an empty entry as null, "
                f"so the class prompt would be {str(name)!r}; quote every name in the yaml "
                f"(e.g. names: ['yes', 'no', '1'])", code="non_string_class_name")


def _resolve(entry: str, root: Path, yaml_dir: Path) -> Path | None:
    """First existing location for a yaml path entry, trying the rewrites users need."""
    path = Path(entry)
    if path.is_absolute():
        # another machine's absolute path: try its trailing parts under the yaml's folder
        candidates = [path] + [base / Path(*path.parts[i:]) for i in range(1, len(path.parts))
                               for base in (root, yaml_dir)]
    else:
        stripped = Path(*[p for p in path.parts if p not in ("..", ".")] or ["."])
        candidates = [root / path, yaml_dir / path, yaml_dir.parent / path, root / stripped, yaml_dir / stripped]
    return next((c.resolve() for c in candidates if c.exists()), None)


def split_image_dirs(config: dict, yaml_path: Path, split: str) -> list[Path]:
    """Image folders (or list files) of one split; conventional folders when the yaml omits it."""
    yaml_dir = yaml_path.parent
    root = Path(config["path"]) if config.get("path") else yaml_dir
    root = root if root.is_absolute() else yaml_dir / root
    entries = [config[key] for key, value in SPLIT_KEYS.items() if value == split and config.get(key)]
    if not entries:
        aliases = [key for key, value in SPLIT_KEYS.items() if value == split]
        entries = [f"{alias}/images" for alias in aliases] + [f"images/{alias}" for alias in aliases]
        return [p for p in (_resolve(e, root, yaml_dir) for e in entries) if p is not None][:1]
    flat = [e for entry in entries for e in (entry if isinstance(entry, list) else [entry])]
    resolved = []
    for entry in flat:
        path = _resolve(str(entry), root, yaml_dir)
        if path is None:
            raise DatasetFormatError(
                f"{yaml_path}: {split} entry {entry!r} does not exist (tried relative to {root}, to the yaml's "
                f"folder and, for absolute paths, their trailing parts under it); fix the path in the yaml")
        resolved.append(path)
    return resolved


def label_dir_for(image_dir: Path, yaml_dir: Path) -> Path:
    """Labels folder: `images` -> `labels` in the path (Ultralytics rule), also under the yaml's folder."""
    parts = image_dir.parts
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        tail = Path("labels", *parts[i + 1:])
        for candidate in (Path(*parts[:i]) / tail, yaml_dir / tail):
            if candidate.is_dir():
                return candidate
    if any(image_dir.glob("*.txt")):
        return image_dir
    raise DatasetFormatError(f"{image_dir}: no labels folder found (expected the same path with 'images' "
                             f"replaced by 'labels'); put the .txt label files there")


def keypoint_values(config: dict, yaml_path: Path) -> int | None:
    """Numbers of keypoints after each box in a pose dataset's lines (`kpt_shape: [K, 2 or 3]`), else None."""
    shape = config.get("kpt_shape")
    if shape is None:
        return None
    if (not isinstance(shape, list) or len(shape) != 2 or not all(isinstance(n, int) for n in shape)
            or shape[1] not in (2, 3)):
        raise DatasetFormatError(f"{yaml_path}: kpt_shape is {shape!r}; a pose dataset writes [keypoints, 2 or 3] "
                                 f"(x, y and maybe visibility), e.g. kpt_shape: [17, 3]")
    return shape[0] * shape[1]


def parse_label_file(path: Path, width: int, height: int, keypoints: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Read one label file -> (xyxy pixel boxes, class indices). Missing file = no boxes.

    Args:
        keypoints: for a pose dataset, the numbers after each line's box (`keypoint_values`); its lines
            are 'class cx cy w h' + keypoints, which would otherwise read as a polygon.
    """
    if not path.is_file():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    boxes, labels = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise DatasetFormatError(f"{path}:{number}: {line!r} is not numeric; lines are 'class cx cy w h'")
        if not values[0].is_integer():  # e.g. 'cx cy w h class': the class column holds a coordinate
            raise DatasetFormatError(f"{path}:{number}: {line!r} starts with {parts[0]}, not a class index; lines "
                                     f"are 'class cx cy w h' with the class a whole number first")
        if keypoints is not None and len(values) != 5 + keypoints:
            raise DatasetFormatError(f"{path}:{number}: {line!r} has {len(values)} numbers; the yaml's kpt_shape "
                                     f"makes a line 'class cx cy w h' and {keypoints} keypoint numbers")
        if len(values) == 5 or keypoints is not None:
            cx, cy, w, h = values[1:5]
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        elif len(values) >= 7 and len(values) % 2 == 1:
            xs, ys = values[1::2], values[2::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        else:
            raise DatasetFormatError(f"{path}:{number}: {line!r} has {len(values)} numbers; expected 5 "
                                     f"('class cx cy w h', normalised) or a polygon 'class x1 y1 x2 y2 x3 y3 ...'")
        boxes.append([box[0] * width, box[1] * height, box[2] * width, box[3] * height])
        labels.append(int(values[0]))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def _image_paths(source: Path) -> list[Path]:
    """Images of a split: every image under a folder (subfolders too, as Ultralytics reads them),
    or those a .txt file lists, one per line, relative to the list's folder."""
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    lines = source.read_text(encoding="utf-8-sig").splitlines()
    return [(source.parent / line.strip()).resolve() for line in lines if line.strip()]


def read_yolo(src: str | Path, split: str | None = None) -> DetectionDataset:
    """Read a YOLO dataset described by a data.yaml.

    Args:
        src: the yaml file, or a folder holding it.
        split: 'train', 'val'/'valid' or 'test'; None reads every split found.

    Returns:
        The dataset; image sizes come from the file headers (EXIF rotation applied);
        an unreadable image is kept with size 0 x 0 for the doctor to report.
    """
    src = Path(src)
    yaml_path = find_yaml(src) if src.is_dir() else src
    config = load_config(yaml_path)
    vocabulary = vocabulary_from_yaml(config, yaml_path)
    keypoints = keypoint_values(config, yaml_path)
    if split is not None and split not in SPLIT_KEYS:
        raise DatasetFormatError(f"{yaml_path}: unknown split {split!r}; use one of {sorted(SPLIT_KEYS)}")
    splits = [SPLIT_KEYS[split]] if split else ["train", "val", "test"]
    datasets, read = [], set()
    for name in splits:
        image_dirs = split_image_dirs(config, yaml_path, name)
        if not image_dirs and split:
            raise DatasetFormatError(f"{yaml_path}: split {split!r} is neither in the yaml nor a {split}/images "
                                     f"folder beside it; add '{split}: <images folder>' to the yaml")
        for image_dir in image_dirs:
            if image_dir not in read:  # coco128.yaml names one folder as train and val: read it once
                read.add(image_dir)
                datasets.append(_read_image_dir(image_dir, yaml_path, vocabulary, keypoints))
    if not datasets:
        raise DatasetFormatError(f"{yaml_path}: no train/val/test image folders found; add them to the yaml")
    dataset = datasets[0] if len(datasets) == 1 else merge_datasets(datasets, str(yaml_path))
    for image_id, record in enumerate(dataset.records):
        record.image_id = image_id
    dataset.source = str(yaml_path)
    return dataset


def orphan_label_files(images: list[Path], label_dir: Path) -> list[Path]:
    """Label files whose image is absent (their boxes cannot be placed; the doctor reports them)."""
    stems = {path.stem for path in images}
    return sorted(p for p in label_dir.glob("*.txt") if p.stem not in stems)


def _warn_orphan_labels(folder: Path, label_dir: Path) -> None:
    # every image in the folder counts, not only the listed ones: a .txt split lists a subset
    orphans = orphan_label_files(list_images(folder), label_dir) if label_dir.is_dir() else []
    if orphans and label_dir != folder:
        logger.warning("%s: %d label files have no image and are not read (first: %s); "
                       "run `cl-detect data check` for the list", label_dir, len(orphans), orphans[0].name)


def _read_image_dir(image_dir: Path, yaml_path: Path, vocabulary: Vocabulary,
                    keypoints: int | None = None) -> DetectionDataset:
    """One split entry: an image folder, whose labels folder mirrors its subfolders, or a .txt list
    of images, each labelled in its own folder's labels folder (`images` -> `labels`, as Ultralytics)."""
    label_dirs: dict[Path, Path] = {}  # image folder -> its labels folder
    top_labels = label_dir_for(image_dir, yaml_path.parent) if image_dir.is_dir() else None
    records = []
    for path in _image_paths(image_dir):
        if path.parent not in label_dirs:
            label_dirs[path.parent] = (top_labels / path.parent.relative_to(image_dir) if top_labels
                                       else label_dir_for(path.parent, yaml_path.parent))
        try:
            width, height = image_size(path)
        except OSError:
            width = height = 0
        boxes, labels = parse_label_file(label_dirs[path.parent] / (path.stem + ".txt"), width, height, keypoints)
        records.append(DetectionRecord(str(path), width, height, boxes, labels))
    for folder, label_dir in label_dirs.items():
        _warn_orphan_labels(folder, label_dir)
    # a list file's images are relative to its folder; an image folder's root is the split folder above it
    return DetectionDataset(records, vocabulary, source=str(image_dir), image_root=str(image_dir.parent))
