"""Merge datasets with different class lists into one dataset over the union vocabulary.

Used wherever several vocabularies train together: joint training over all tasks
(`cl_detect.bench.joint`) and pretraining on several datasets with negatives
sampled across their union (`cl_detect.engine.pretrain`). Class names match
case- and whitespace-insensitively ("Dog" and "dog " are one class, spelled as
first seen); labels are remapped, -1 (an unknown class kept for the doctor)
stays -1, ignore regions follow their class, and image ids are renumbered 1..N
so images of different sources never share one. Inputs are not modified.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary


def normalised_name(name: str) -> str:
    return " ".join(name.lower().split())


def union_vocabulary(vocabularies: Sequence[Vocabulary]) -> tuple[Vocabulary, list[np.ndarray]]:
    """Class names of all vocabularies in first-seen order, and each one's label map into it.

    A name shared by several vocabularies becomes one class, with the spelling and
    synonyms of its first occurrence. Category ids are renumbered 1..K, because
    datasets number their categories independently.

    Returns:
        (union vocabulary, per vocabulary an int64 array old label -> union label).
    """
    index: dict[str, int] = {}
    names: list[str] = []
    synonyms: list[tuple[str, ...]] = []
    label_maps = []
    for vocabulary in vocabularies:
        mapping = []
        for position, name in enumerate(vocabulary.names):
            key = normalised_name(name)
            if key not in index:
                index[key] = len(names)
                names.append(name)
                synonyms.append(tuple(vocabulary.synonyms[position]) if vocabulary.synonyms else ())
            mapping.append(index[key])
        label_maps.append(np.array(mapping, dtype=np.int64))
    return Vocabulary(tuple(names), synonyms=tuple(synonyms) if any(synonyms) else ()), label_maps


def remap_labels(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Old labels -> union labels; -1 (unknown class) stays -1."""
    return np.where(labels >= 0, mapping[np.clip(labels, 0, None)], labels) if len(mapping) else labels


def merge_datasets(datasets: Sequence[DetectionDataset], source: str, keep_grounding: bool = False
                   ) -> DetectionDataset:
    """One dataset over the union vocabulary of `datasets`.

    Args:
        datasets: detection datasets (and, with `keep_grounding`, grounding ones).
        source: name of the merged set for messages.
        keep_grounding: pass grounding records through unchanged (their labels index their
            own phrases); otherwise grounding records are an error.
    """
    grounding = any(record.is_grounding for dataset in datasets for record in dataset.records)
    if grounding and not keep_grounding:
        raise ValueError(f"{source}: merging class vocabularies, but grounding records have per-image phrases")
    union, label_maps = union_vocabulary([d.vocabulary for d in datasets])
    records: list[DetectionRecord] = []
    for dataset, mapping in zip(datasets, label_maps):
        for record in dataset.records:
            changes = {"image_id": len(records) + 1}
            if not record.is_grounding:
                changes.update(labels=remap_labels(record.labels, mapping),
                               ignore_labels=remap_labels(record.ignore_labels, mapping))
            records.append(dataclasses.replace(record, **changes))
    roots = [d.image_root for d in datasets if d.image_root]
    image_root = os.path.commonpath(roots) if roots else ""
    return DetectionDataset(records, union, source=source, image_root=image_root)
