"""The dataset doctor in front of training: refuse on errors, or, when told to go on, say what is left out."""
from __future__ import annotations

import dataclasses
import sys

from cl_detect.data.records import DetectionDataset


def drop_unknown_labels(dataset: DetectionDataset) -> tuple[DetectionDataset, int]:
    """The dataset without the boxes whose label is outside its vocabulary (a grounding record's:
    outside its phrases), e.g. -1 for a category id the class list lacks; and how many were dropped."""
    records = [record.without_unknown_labels(len(dataset.vocabulary)) for record in dataset.records]
    dropped = sum(len(before.labels) - len(after.labels) for before, after in zip(dataset.records, records))
    return dataclasses.replace(dataset, records=records), dropped


def checked_dataset(dataset: DetectionDataset, allow_errors: bool, where: str,
                    check_images: bool = True) -> DetectionDataset:
    """Run the doctor on `dataset`. On errors: raise its report, or, with `allow_errors`, print it
    and go on without the boxes no prompt can stand for (counted on stderr, never silently).

    Args:
        dataset: what a task trains or evaluates on.
        allow_errors: the explicit override (`--allow-data-errors`, `allow_data_errors: true`).
        where: names the dataset in the messages (a task name or a path).
        check_images: let the doctor open every image.
    """
    from cl_detect.data.doctor import check_dataset
    report = check_dataset(dataset, check_images=check_images)
    if report.ok:
        return dataset
    print(f"{where}:\n{report.format_text()}", file=sys.stderr)
    if not allow_errors:
        report.raise_on_errors()  # names the file, the records and the fix
    dataset, dropped = drop_unknown_labels(dataset)
    if dropped:
        print(f"{where}: going on without {dropped} box(es) whose class is not in the vocabulary "
              f"(data errors allowed)", file=sys.stderr)
    return dataset
