"""The joint-training upper bound: every task's training data at once, one union vocabulary.

A protocol run with `joint: true` trains once on `merge_task_datasets(task
training sets)` instead of task after task, then evaluates every task and
retention set as usual. Its accuracy matrix repeats that one evaluation in rows
1..T (the jointly trained model is the model "after" every task), so
forgetting and BWT are 0 and the in-domain Avg is the joint model's: the
ceiling a continual method is compared against.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary


def union_vocabulary(vocabularies: Sequence[Vocabulary]) -> tuple[Vocabulary, list[np.ndarray]]:
    """Class names of all vocabularies in first-seen order, and each one's label map into it.

    A name shared by several tasks becomes one class (the same text prompt), keeping
    the synonyms of its first occurrence. Category ids are renumbered 1..K, because
    datasets number their categories independently.

    Args:
        vocabularies: one per task.

    Returns:
        (union vocabulary, per vocabulary an int64 array old label -> union label).
    """
    names: dict[str, int] = {}
    synonyms: list[tuple[str, ...]] = []
    label_maps = []
    for vocabulary in vocabularies:
        mapping = []
        for index, name in enumerate(vocabulary.names):
            if name not in names:
                names[name] = len(names)
                synonyms.append(vocabulary.synonyms[index] if vocabulary.synonyms else ())
            mapping.append(names[name])
        label_maps.append(np.array(mapping, dtype=np.int64))
    union = Vocabulary(tuple(names), synonyms=tuple(synonyms) if any(synonyms) else ())
    return union, label_maps


def _remap(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    # -1 marks an unknown class (kept by readers for the doctor) and stays -1
    return np.where(labels >= 0, mapping[np.clip(labels, 0, None)], labels) if len(mapping) else labels


def merge_task_datasets(datasets: Sequence[DetectionDataset], source: str = "joint") -> DetectionDataset:
    """One training set from several tasks, labels remapped into the union vocabulary.

    Image ids are renumbered 1..N so images of different tasks never share one;
    the inputs are not modified.

    Args:
        datasets: the tasks' training sets (detection data, not grounding).
        source: name of the merged set for messages.

    Returns:
        The merged dataset.
    """
    if any(record.is_grounding for dataset in datasets for record in dataset.records):
        raise ValueError("joint training merges class vocabularies; grounding records have per-image phrases")
    union, label_maps = union_vocabulary([d.vocabulary for d in datasets])
    records: list[DetectionRecord] = []
    for dataset, mapping in zip(datasets, label_maps):
        for record in dataset.records:
            records.append(dataclasses.replace(
                record, image_id=len(records) + 1, labels=_remap(record.labels, mapping),
                ignore_labels=_remap(record.ignore_labels, mapping)))
    roots = [d.image_root for d in datasets if d.image_root]
    image_root = os.path.commonpath(roots) if roots else ""
    return DetectionDataset(records, union, source=source, image_root=image_root)
