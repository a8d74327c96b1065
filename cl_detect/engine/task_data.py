"""Assemble one task's training set: the task's data plus what methods mix in.

Methods (replay, mix) return `(DetectionDataset, ratio)` pairs from
`train_datasets()`; a ratio is the share of each epoch's draws taken from that
dataset. The task keeps the rest, and the epoch is sized so that every task image
is still drawn once per epoch (with `class_balanced`, as often as its repeat
factor says: the balancing applies to the task's own images, not to the mixed-in data).
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Sampler

from cl_detect.data.checked import checked_dataset
from cl_detect.data.loader import TrainDataset
from cl_detect.data.records import DetectionDataset
from cl_detect.data.sampling import (MixedDataset, MixedRepeatFactorSampler, MixingSampler, RepeatFactorSampler,
                                     allocate_counts, repeat_factors)
from cl_detect.data.transforms import AugmentConfig
from cl_detect.engine.config import TrainConfig


def augment_config(config: TrainConfig) -> AugmentConfig:
    """The training augmentation implied by a TrainConfig (official recipe at its size)."""
    return AugmentConfig(image_size=config.image_size, mosaic=config.mosaic)


def checked_extras(extras: list[tuple[DetectionDataset, float]], allow_errors: bool
                   ) -> list[tuple[DetectionDataset, float]]:
    """The non-empty `extras` after the dataset doctor's box and label checks (not the image files: a mix
    source may hold many thousands), refused on errors as a task's own data is unless `allow_errors`.

    Args:
        extras: (dataset, share of draws) pairs contributed by methods (mix sources, replay's buffer).
        allow_errors: the explicit override (`--allow-data-errors`, `allow_data_errors: true`).
    """
    return [(checked_dataset(d, allow_errors, f"data mixed in by a method ({d.source})", check_images=False), r)
            for d, r in extras if r > 0 and len(d)]


def build_task_training_set(task_dataset: DetectionDataset, extras: list[tuple[DetectionDataset, float]],
                            config: TrainConfig) -> tuple[Dataset, Sampler]:
    """Training dataset and resumable sampler for one task.

    Args:
        task_dataset: the task's own training data.
        extras: (dataset, share of draws) pairs contributed by methods.
        config: training settings (size, prompts per image, seed, class balancing).
    """
    augment = augment_config(config)
    task_set = TrainDataset(task_dataset, augment, num_texts=config.num_texts, seed=config.seed)
    extras = [(d, r) for d, r in extras if r > 0 and len(d)]
    if not extras:
        if config.class_balanced:
            return task_set, RepeatFactorSampler(repeat_factors(task_dataset), seed=config.seed)
        return task_set, MixingSampler([len(task_set)], seed=config.seed)
    return mix_in([task_set], extras, config)


def mix_in(task_parts: list[TrainDataset], extras: list[tuple[DetectionDataset, float]],
           config: TrainConfig) -> tuple[MixedDataset, Sampler]:
    """The task's parts, each image drawn once per epoch (with `class_balanced`, by its repeat
    factor), followed by the non-empty `extras`, each taking its share of the epoch's draws.

    Args:
        task_parts: the task's training datasets (`cl-detect pretrain` may have several).
        extras: (dataset, share of draws) pairs contributed by methods.
        config: training settings; extra i is augmented with seed `config.seed + len(task_parts) + i`.
    """
    extras = [(d, r) for d, r in extras if r > 0 and len(d)]
    extra_share = sum(r for _, r in extras)
    if extra_share >= 1:
        raise ValueError(f"mixed-in data takes {extra_share:.2f} of every epoch; the shares must sum below 1")
    augment = augment_config(config)
    parts = task_parts + [TrainDataset(d, augment, num_texts=config.num_texts, seed=config.seed + len(task_parts) + i)
                          for i, (d, _) in enumerate(extras)]
    if config.class_balanced:
        factors = np.concatenate([repeat_factors(part.dataset) for part in task_parts])
        sampler = MixedRepeatFactorSampler(factors, [len(p) for p in parts[len(task_parts):]],
                                           [r for _, r in extras], seed=config.seed)
        return MixedDataset(parts), sampler
    task_length = sum(len(part) for part in task_parts)
    samples = round(task_length / (1 - extra_share))
    # exact draw counts: each task image once per epoch (shares alone could round the task to N +- 1),
    # the remaining draws split among the extras by their shares
    extra_counts = allocate_counts(samples - task_length, np.array([r for _, r in extras]))
    counts = [len(part) for part in task_parts] + extra_counts.tolist()
    sampler = MixingSampler([len(p) for p in parts], counts, samples_per_epoch=samples, seed=config.seed)
    return MixedDataset(parts), sampler
