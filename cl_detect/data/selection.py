"""Keep part of a dataset: the images an image list names (e.g. Raccoon's `test_labels.csv`)
and at most N images, a fixed-seed draw, so every method and seed sees the same subset.
Used by protocol data specs and by `cl-detect pretrain`/`finetune` dataset entries alike."""
from __future__ import annotations

import csv
import dataclasses
import random
from pathlib import Path

from cl_detect.data.records import DetectionDataset

SUBSET_SEED = 0


def image_names(path: Path) -> set[str]:
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


def select_images(dataset: DetectionDataset, image_list: Path | None, max_images: int | None,
                  where: str) -> DetectionDataset:
    """The records whose file names `image_list` lists (all when None), then at most `max_images` of them.

    Raises:
        ValueError: the list names none of the dataset's images (`where` names the dataset).
    """
    if image_list is not None:
        names = image_names(Path(image_list))
        records = [r for r in dataset.records if Path(r.image_path).name in names]
        if not records:
            raise ValueError(f"{image_list}: none of its images are in {where}; check that the list belongs to "
                             f"this dataset (names are matched without their folders)")
        dataset = dataclasses.replace(dataset, records=records)
    return subset(dataset, max_images)
