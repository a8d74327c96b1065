"""Read a protocol's datasets once: every task's train/test set and every retention set.

Prompts replace class names in the vocabulary, so training texts, evaluation
prompts and per-category AP all use the same words. Subsets (`max_images`,
`--max-train-images`) are fixed-seed random draws, identical for every method
and seed, so runs compare on the same images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from cl_detect._config_keys import check_names
from cl_detect.bench.config import DataSpec, RetentionSpec, RunConfig
from cl_detect.data._doctor_boxes import check_labels
from cl_detect.data.checked import checked_dataset
from cl_detect.data.doctor import load_texts
from cl_detect.data.readers import read_dataset
from cl_detect.data.records import DetectionDataset, Vocabulary
from cl_detect.data.selection import select_images

@dataclass
class TaskData:
    """One task's datasets (vocabulary = the prompts)."""

    name: str
    train: DetectionDataset
    test: DetectionDataset


@dataclass
class RetentionData:
    """One retention set, its evaluation protocol and prompts."""

    name: str
    dataset: DetectionDataset
    protocol: str
    prompts: list[str] | None


@dataclass
class ProtocolData:
    """Everything a run evaluates and trains on."""

    tasks: list[TaskData]
    retention: list[RetentionData]

    def general_vocabulary(self) -> dict[str, list[str]]:
        """Retention set name -> prompts (what `distill` may look up by name)."""
        return {r.name: list(r.prompts or r.dataset.vocabulary.names) for r in self.retention}

    def fingerprint(self) -> str:
        """A short hash of what runs train and score on: per set its name, image and box counts,
        class names and prompts. Paths are left out, so the same data on another machine (or
        under another root) gives the same value, while another split, image subset or prompt
        list does not."""
        def shape(dataset: DetectionDataset) -> list:
            return [len(dataset), dataset.num_boxes, list(dataset.vocabulary.names)]

        parts = [[t.name, shape(t.train), shape(t.test)] for t in self.tasks]
        parts += [[r.name, r.protocol, shape(r.dataset), r.prompts] for r in self.retention]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def read_spec(config: RunConfig, spec: DataSpec, max_images: int | None = None, where: str = "") -> DetectionDataset:
    """Read one `DataSpec` (image list and size limits applied).

    Args:
        config: gives `data_root` for relative paths.
        spec: what to read.
        max_images: a further cap (the smaller of it and `spec.max_images` applies).
        where: names the entry in errors (e.g. "task aquarium train").
    """
    for key in ("path", "image_list", "image_root"):  # readers given a format open the file as is: name the entry
        value = getattr(spec, key)
        if value and not config.resolve_path(value).exists():
            raise ValueError(f"{where or 'dataset'}: {key} {value!r} does not exist ({config.resolve_path(value)}; "
                             f"relative paths are joined to data_root {config.data_root!r}); fix the path in the "
                             f"protocol file")
    path = config.resolve_path(spec.path)
    options = {"image_root": str(config.resolve_path(spec.image_root))} if spec.image_root else {}
    if spec.class_names is not None:
        options["class_names"] = list(spec.class_names)
    dataset = read_dataset(path, format=spec.format, split=spec.split, **options)
    image_list = config.resolve_path(spec.image_list) if spec.image_list else None
    limits = [n for n in (spec.max_images, max_images) if n is not None]
    return select_images(dataset, image_list, min(limits) if limits else None, spec.path)


def with_prompts(dataset: DetectionDataset, prompts: list[str] | None, where: str) -> DetectionDataset:
    """The dataset with its class names replaced by `prompts` (one per class, same order)."""
    if prompts is None:
        return dataset
    if len(prompts) != len(dataset.vocabulary):
        raise ValueError(f"{where}: {len(prompts)} prompts for the {len(dataset.vocabulary)} classes of "
                         f"{dataset.source} {list(dataset.vocabulary.names)}; give one prompt per class, in this order")
    vocabulary = Vocabulary(tuple(prompts), category_ids=dataset.vocabulary.category_ids,
                            frequency=dataset.vocabulary.frequency)
    return dataclasses.replace(dataset, vocabulary=vocabulary)


def prompts_by_name(prompts: list[str] | None, train_names: tuple[str, ...], test_names: tuple[str, ...],
                    where: str) -> list[str] | None:
    """A task's prompts for its test set, matched by class name to the training set's classes.

    The prompts follow the training set's class order; a test file may list the same classes in
    another order (a COCO json written by another tool) or fewer of them (a VOC split lacking one),
    and a positional match would score each class under another class's prompt.
    """
    if prompts is None or len(prompts) != len(train_names):
        return prompts  # `with_prompts` reports a count that does not fit the training set
    by_name = dict(zip(train_names, prompts))
    unknown = [name for name in test_names if name not in by_name]
    if unknown:
        raise ValueError(f"{where}: test class(es) {unknown} are not among the training classes "
                         f"{list(train_names)}; prompts are given to the test set's classes by name, so "
                         f"name the classes alike in both splits (or leave out `prompts`)")
    return [by_name[name] for name in test_names]


THUMBNAIL = 32  # px: two copies of one photo (one stored resized or re-encoded) agree at this size
SAME_PICTURE_LEVELS = 6.0  # mean absolute grey-level difference (0-255) below which two files are one picture


def same_picture(path_a: str, path_b: str) -> bool:
    """Whether two image files show the same picture: equal bytes, or the same aspect ratio (up to
    resize rounding) and within `SAME_PICTURE_LEVELS` of each other as `THUMBNAIL`-pixel grey
    thumbnails (COCO's 427x640 original and coco128's 278x416 copy of it differ by 0.2 levels;
    two different photos by tens)."""
    import cv2
    import numpy as np
    if Path(path_a).read_bytes() == Path(path_b).read_bytes():
        return True
    images = []
    for path in (path_a, path_b):
        image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{path}: cannot read the image to compare it with its namesake {path_a!r}")
        images.append(image)
    (height_a, width_a), (height_b, width_b) = images[0].shape, images[1].shape
    # a resized copy keeps the aspect ratio up to rounding (|w_a h_b - w_b h_a| <= (w + h) / 2 of the
    # larger); the square thumbnails alone take a landscape and a portrait photo of similar colours for one
    if abs(width_a * height_b - width_b * height_a) > max(width_a + height_a, width_b + height_b):
        return False
    thumbnails = [cv2.resize(image, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float32)
                  for image in images]
    return float(np.abs(thumbnails[0] - thumbnails[1]).mean()) < SAME_PICTURE_LEVELS


def merge_by_name(datasets: list[DetectionDataset], where: str) -> DetectionDataset:
    """Merge datasets with the same class names (any order): labels follow the first's order,
    image ids are renumbered 1..N. An image whose file name was already taken is the same image
    stored twice (e.g. a COCO photo in two collections, one resized) when `same_picture` says so:
    it is kept once, and the count is printed. A different picture with the same name is kept."""
    first = datasets[0]
    index = {name: i for i, name in enumerate(first.vocabulary.names)}
    records, kept_paths, repeated = [], {}, 0
    for dataset in datasets:
        if set(dataset.vocabulary.names) != set(index):
            raise ValueError(f"{where}: {dataset.source} and {first.source} have different class names")
        relabel = [index[name] for name in dataset.vocabulary.names]
        for record in dataset.records:
            namesakes = kept_paths.setdefault(Path(record.image_path).name, [])
            if any(same_picture(path, record.image_path) for path in namesakes):
                repeated += 1
                continue
            namesakes.append(record.image_path)
            labels = record.labels.copy()
            known = labels >= 0
            labels[known] = [relabel[label] for label in labels[known]]
            ignore = record.ignore_labels.copy()
            ignore[ignore >= 0] = [relabel[label] for label in ignore[ignore >= 0]]
            records.append(dataclasses.replace(record, labels=labels, ignore_labels=ignore,
                                               image_id=len(records) + 1))
    if repeated:
        print(f"{where}: {repeated} image(s) found in more than one source were kept once", file=sys.stderr)
    vocabulary = Vocabulary(first.vocabulary.names, synonyms=first.vocabulary.synonyms)
    return DetectionDataset(records, vocabulary, source=where, image_root=first.image_root)


def retention_prompts(config: RunConfig, spec: RetentionSpec) -> list[str] | None:
    """A retention set's prompts: its list, or the first text of each class in its prompt file."""
    if not isinstance(spec.prompts, str):
        return spec.prompts
    path = config.resolve_path(spec.prompts)
    if not path.is_file():
        raise ValueError(f"retention set {spec.name}: prompts file {spec.prompts!r} does not exist ({path}; relative "
                         f"paths are joined to data_root {config.data_root!r})")
    prompts = [texts[0] if texts else "" for texts in load_texts(path)]
    check_names(prompts, f"retention set {spec.name} ({path})", allow_repeats=True)
    return prompts


def check_scoreable(dataset: DetectionDataset, where: str) -> DetectionDataset:
    """Refuse an evaluation set without ground truth: COCO and LVIS AP is then -1 ("undefined"),
    which the matrices would read as an AP (R = -1 / -1 = 100%)."""
    if not any((record.labels >= 0).any() for record in dataset.records):
        raise ValueError(f"{where}: {dataset.source} has no ground-truth box in its {len(dataset)} image(s), so "
                         f"its AP is undefined (pycocotools reports -1); point it at an annotated split (check "
                         f"image_list / max_images) or leave the set out of the protocol")
    return dataset


def check_label_range(dataset: DetectionDataset, where: str) -> DetectionDataset:
    """Refuse an evaluation set with a box outside its class list (a YOLO class index >= the number of
    names, a COCO category id missing from `categories`): scoring it fails in every run, after the
    base model has been built and other sets evaluated, so say it while the protocol is read.
    Grounding records (no class list) are refused too: they were scored AP 0 with no prompts."""
    if any(record.is_grounding for record in dataset.records):  # no class list: every set scored AP 0
        raise ValueError(f"{where}: {dataset.source} holds grounding records (a caption and its phrases, no class "
                         f"list), which COCO / LVIS AP cannot score; evaluate on detection data (a COCO, LVIS, YOLO "
                         f"or VOC set, or ODVG `detection` instances)")
    outside = []  # the dataset doctor's label check, its findings collected
    check_labels(dataset, lambda severity, code, message, fix="": outside.append(message))
    if outside:
        raise ValueError(f"{where}: {len(outside)} box(es) of {dataset.source} have a label outside its "
                         f"{len(dataset.vocabulary)} classes, e.g. {outside[0]}; fix the labels or the class list "
                         f"(`cl-detect data check {dataset.source}` lists every such box)")
    return dataset


def check_images_exist(dataset: DetectionDataset, where: str) -> DetectionDataset:
    """Refuse an evaluation set whose image files are missing (an LVIS json under the wrong
    `image_root`): every run would fail at its first evaluation, naming one file and no setting."""
    missing = [record.image_path for record in dataset.records if not Path(record.image_path).is_file()]
    if missing:
        raise ValueError(f"{where}: {len(missing)} of the {len(dataset)} images of {dataset.source} do not exist, "
                         f"e.g. {missing[0]}; point `image_root` at the folder the file names are relative to")
    return dataset


def checked_evaluation_set(dataset: DetectionDataset, where: str) -> DetectionDataset:
    """A test or retention set that can be scored in every run (see the checks above)."""
    return check_images_exist(check_label_range(check_scoreable(dataset, where), where), where)


def load_protocol_data(config: RunConfig, max_train_images: int | None = None) -> ProtocolData:
    """Read every dataset a protocol names.

    Args:
        config: the protocol.
        max_train_images: cap on each task's training images (quick runs).

    Returns:
        The tasks' and retention sets' datasets.
    """
    tasks = []
    for task in config.tasks:
        train = read_spec(config, task.train, max_train_images, f"task {task.name} train")
        train = checked_dataset(train, config.allow_data_errors, f"task {task.name}")
        test = checked_evaluation_set(read_spec(config, task.test, where=f"task {task.name} test"),
                                      f"task {task.name} test set")
        prompts = prompts_by_name(task.prompts, train.vocabulary.names, test.vocabulary.names, task.name)
        tasks.append(TaskData(task.name, with_prompts(train, task.prompts, task.name),
                              with_prompts(test, prompts, task.name)))
    retention = []
    for spec in config.retention:
        parts = [read_spec(config, data, where=f"retention set {spec.name}") for data in spec.data]
        dataset = parts[0] if len(parts) == 1 else merge_by_name(parts, f"retention set {spec.name}")
        checked_evaluation_set(dataset, f"retention set {spec.name}")
        prompts = retention_prompts(config, spec)
        if prompts is not None and len(prompts) != len(dataset.vocabulary):
            raise ValueError(f"retention set {spec.name}: {len(prompts)} prompts for the {len(dataset.vocabulary)} "
                             f"classes of {dataset.source}; give one prompt per class, in its class order")
        retention.append(RetentionData(spec.name, dataset, spec.protocol, prompts))
    return ProtocolData(tasks, retention)
