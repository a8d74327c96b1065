"""Read a protocol's datasets once: every task's train/test set and every retention set.

Prompts replace class names in the vocabulary, so training texts, evaluation
prompts and per-category AP all use the same words. Subsets (`max_images`,
`--max-train-images`) are fixed-seed random draws, identical for every method
and seed, so runs compare on the same images.
"""
from __future__ import annotations

import csv
import dataclasses
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from cl_detect.bench.config import DataSpec, RunConfig
from cl_detect.data.checked import checked_dataset
from cl_detect.data.readers import read_dataset
from cl_detect.data.records import DetectionDataset, Vocabulary

SUBSET_SEED = 0


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


def _image_names(path: Path) -> set[str]:
    """File names listed in a csv (`filename` column) or a text file (one per line)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "filename" not in rows[0]:
            raise ValueError(f"{path}: an image list csv needs a 'filename' column, got {list(rows[0])}")
        return {Path(row["filename"]).name for row in rows}
    return {Path(line.strip()).name for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()}


def subset(dataset: DetectionDataset, max_images: int | None) -> DetectionDataset:
    """At most `max_images` records, a fixed-seed draw kept in the original order."""
    if max_images is None or len(dataset) <= max_images:
        return dataset
    keep = sorted(random.Random(SUBSET_SEED).sample(range(len(dataset)), max_images))
    return dataclasses.replace(dataset, records=[dataset.records[i] for i in keep])


def read_spec(config: RunConfig, spec: DataSpec, max_images: int | None = None) -> DetectionDataset:
    """Read one `DataSpec` (image list and size limits applied).

    Args:
        config: gives `data_root` for relative paths.
        spec: what to read.
        max_images: a further cap (the smaller of it and `spec.max_images` applies).
    """
    path = config.resolve_path(spec.path)
    options = {"image_root": str(config.resolve_path(spec.image_root))} if spec.image_root else {}
    if spec.class_names is not None:
        options["class_names"] = list(spec.class_names)
    dataset = read_dataset(path, format=spec.format, split=spec.split, **options)
    if spec.image_list:
        names = _image_names(config.resolve_path(spec.image_list))
        records = [r for r in dataset.records if Path(r.image_path).name in names]
        if not records:
            raise ValueError(f"{spec.image_list}: none of its images are in {spec.path}")
        dataset = dataclasses.replace(dataset, records=records)
    limits = [n for n in (spec.max_images, max_images) if n is not None]
    return subset(dataset, min(limits) if limits else None)


def with_prompts(dataset: DetectionDataset, prompts: list[str] | None, where: str) -> DetectionDataset:
    """The dataset with its class names replaced by `prompts` (one per class, same order)."""
    if prompts is None:
        return dataset
    if len(prompts) != len(dataset.vocabulary):
        raise ValueError(f"{where}: {len(prompts)} prompts for {len(dataset.vocabulary)} classes "
                         f"{list(dataset.vocabulary.names)}")
    vocabulary = Vocabulary(tuple(prompts), category_ids=dataset.vocabulary.category_ids,
                            frequency=dataset.vocabulary.frequency)
    return dataclasses.replace(dataset, vocabulary=vocabulary)


THUMBNAIL = 32  # px: two copies of one photo (one stored resized or re-encoded) agree at this size
SAME_PICTURE_LEVELS = 6.0  # mean absolute grey-level difference (0-255) below which two files are one picture


def same_picture(path_a: str, path_b: str) -> bool:
    """Whether two image files show the same picture: equal bytes, or within `SAME_PICTURE_LEVELS`
    of each other as `THUMBNAIL`-pixel grey thumbnails (COCO's 427x640 original and coco128's
    278x416 copy of it differ by 0.2 levels; two different photos by tens)."""
    import cv2
    import numpy as np
    if Path(path_a).read_bytes() == Path(path_b).read_bytes():
        return True
    thumbnails = []
    for path in (path_a, path_b):
        image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{path}: cannot read the image to compare it with its namesake {path_a!r}")
        thumbnails.append(cv2.resize(image, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float32))
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
        train = checked_dataset(read_spec(config, task.train, max_train_images), config.allow_data_errors,
                                f"task {task.name}")
        tasks.append(TaskData(task.name, with_prompts(train, task.prompts, task.name),
                              with_prompts(read_spec(config, task.test), task.prompts, task.name)))
    retention = []
    for spec in config.retention:
        parts = [read_spec(config, data) for data in spec.data]
        dataset = parts[0] if len(parts) == 1 else merge_by_name(parts, f"retention set {spec.name}")
        if spec.prompts is not None and len(spec.prompts) != len(dataset.vocabulary):
            raise ValueError(f"retention set {spec.name}: {len(spec.prompts)} prompts for "
                             f"{len(dataset.vocabulary)} classes")
        retention.append(RetentionData(spec.name, dataset, spec.protocol, spec.prompts))
    return ProtocolData(tasks, retention)
