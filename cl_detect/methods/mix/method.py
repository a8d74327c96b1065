"""`mix`: keep open-vocabulary ability by training on general data beside each task.

The YOLO-World maintainers advise mixing GQA (grounding) data into fine-tuning
to keep zero-shot ability but ship no config for it. Here every task's epochs
draw a fixed share from each configured source through the data mixing sampler:

- grounding records (GoldG/GQA json, ODVG grounding) are prompted with their
  own phrases; the negatives are the same image's other phrases, padded with ''
  (the official grounding pipeline; `cl_detect.data.text_sampling` does it);
- detection sets (COCO, LVIS, Objects365, YOLO, VOC) are prompted with their own
  vocabulary, negatives drawn from it.

Sources are read once, on first use, so building a model (e.g. to evaluate a
checkpoint) reads nothing.
"""
from __future__ import annotations

import logging

import numpy as np

from cl_detect.data.readers import read_dataset
from cl_detect.data.records import DetectionDataset
from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.mix.config import MixConfig, MixSource

log = logging.getLogger(__name__)


def split_by_kind(dataset: DetectionDataset) -> list[DetectionDataset]:
    """Detection and grounding records as separate datasets (a mosaic cannot combine the two kinds).

    Returns:
        The non-empty parts: detection records with the dataset's vocabulary, grounding records.
    """
    records = [r.without_unknown_labels() for r in dataset.records]  # no prompt names -1
    detection = [r for r in records if not r.is_grounding]
    grounding = [r for r in records if r.is_grounding]
    parts = [DetectionDataset(detection, dataset.vocabulary, dataset.source, dataset.image_root),
             DetectionDataset(grounding, dataset.vocabulary, dataset.source, dataset.image_root)]
    return [part for part in parts if len(part)]


class MixMethod(Method):
    """Adds the configured sources to every task's training set; no loss, no parameters.

    Args:
        config: the sources and the seed of their per-task subsets.
    """

    def __init__(self, config: MixConfig):
        super().__init__(config)
        self._loaded: dict[int, DetectionDataset] = {}

    def source_dataset(self, index: int) -> DetectionDataset:
        """Source `index`, read on first use."""
        if index not in self._loaded:
            source: MixSource = self.config.data[index]
            where = {"image_root": source.image_root} if source.image_root is not None else {}
            self._loaded[index] = read_dataset(source.path, format=source.format, **where)
            log.info("mix: read %d images from %s", len(self._loaded[index]), source.path)
        return self._loaded[index]

    def subset(self, index: int, task_index: int) -> DetectionDataset:
        """The images of source `index` used for task `task_index` (seeded by both)."""
        source, dataset = self.config.data[index], self.source_dataset(index)
        if source.max_images is None or source.max_images >= len(dataset):
            return dataset
        rng = np.random.default_rng([self.config.seed, task_index, index])
        chosen = np.sort(rng.choice(len(dataset), size=source.max_images, replace=False))
        return DetectionDataset([dataset.records[i] for i in chosen], dataset.vocabulary, dataset.source,
                                dataset.image_root)

    def data_share(self) -> float:
        return sum(source.ratio for source in self.config.data)

    def train_datasets(self, model: ContinualModel, task: TaskContext) -> list[tuple[DetectionDataset, float]]:
        """Each source at its ratio (split by record kind in proportion to size when it holds both)."""
        mixed = []
        for index, source in enumerate(self.config.data):
            parts = split_by_kind(self.subset(index, task.index))
            total = sum(len(part) for part in parts)
            mixed += [(part, source.ratio * len(part) / total) for part in parts]
        return mixed
