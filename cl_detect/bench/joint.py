"""The joint-training upper bound: every task's training data at once, one union vocabulary.

A protocol run with `joint: true` trains once on `merge_task_datasets(task
training sets)` instead of task after task, then evaluates every task and
retention set as usual. Its accuracy matrix repeats that one evaluation in rows
1..T (the jointly trained model is the model "after" every task), so
forgetting and BWT are 0 and the in-domain Avg is the joint model's: the
ceiling a continual method is compared against.
"""
from __future__ import annotations

from typing import Sequence

from cl_detect.data.merge import merge_datasets
from cl_detect.data.records import DetectionDataset


def merge_task_datasets(datasets: Sequence[DetectionDataset], source: str = "joint") -> DetectionDataset:
    """One training set from several tasks, labels remapped into the union vocabulary
    (see `cl_detect.data.merge`; grounding records are an error: they have no class list)."""
    return merge_datasets(datasets, source)
