"""Merge datasets with different class lists into one dataset over the union vocabulary.

Used wherever several vocabularies train together: joint training over all tasks
(`cl_detect.bench.joint`) and pretraining on several datasets with negatives
sampled across their union (`cl_detect.engine.pretrain`). Class names match
case- and whitespace-insensitively ("Dog" and "dog " are one class, spelled as
first seen); labels are remapped, -1 (an unknown class kept for the doctor)
stays -1 and a label past its dataset's class list becomes -1, ignore regions
follow their class, LVIS per-image category lists follow the union's ids, and
image ids are renumbered 1..N so images of different sources never share one.
Inputs are not modified.
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
    """Old labels -> union labels; -1 (unknown class) stays -1, and a label past the old class list (a YOLO
    class index >= nc, kept for the doctor) becomes -1: kept as it is, it would name another union class."""
    known = (labels >= 0) & (labels < len(mapping))
    union = np.full(labels.shape, -1, np.int64)
    union[known] = mapping[labels[known]]
    return union


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
        # LVIS's per-image category lists name the source's ids; the union numbers its classes 1..K
        union_id = {cid: int(mapping[i]) + 1 for i, cid in enumerate(dataset.vocabulary.category_ids)}
        for record in dataset.records:
            changes = {"image_id": len(records) + 1}
            if not record.is_grounding:
                changes.update(labels=remap_labels(record.labels, mapping),
                               ignore_labels=remap_labels(record.ignore_labels, mapping),
                               neg_category_ids=tuple(union_id[c] for c in record.neg_category_ids if c in union_id),
                               not_exhaustive_category_ids=tuple(
                                   union_id[c] for c in record.not_exhaustive_category_ids if c in union_id))
            records.append(dataclasses.replace(record, **changes))
    roots = [d.image_root for d in datasets if d.image_root]
    image_root = os.path.commonpath(roots) if roots else ""
    return DetectionDataset(records, union, source=source, image_root=image_root)
