"""Resumable, seeded samplers: dataset mixing at fixed ratios and repeat-factor sampling.

Samplers yield `DrawKey(index, epoch, position)` rather than bare indices: the
dataset seeds each item's augmentation from the key, so an image drawn twice in
an epoch (oversampled replay, repeat factors) gets two different augmentations,
and the batches do not depend on the number of workers. A sampler's state is
(epoch, position); loading it resumes with the very same draws.
"""
from __future__ import annotations

import abc

import math
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from cl_detect.data.records import DetectionDataset


class DrawKey(NamedTuple):
    """One draw: `index` into the dataset, at `position` of epoch `epoch`."""

    index: int
    epoch: int
    position: int


class _ResumableSampler(Sampler, abc.ABC):
    """Shared epoch / position bookkeeping; subclasses give one epoch's index order."""

    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0
        self.position = 0

    @abc.abstractmethod
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The draw order of `epoch` (indices into the dataset)."""

    def epoch_length(self, epoch: int) -> int:
        """Draws in `epoch` (the training loop sums them over the epochs for its LR schedule);
        subclasses answer without building the epoch's order when they can."""
        return len(self.epoch_order(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning at the next iteration."""
        self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return len(self.epoch_order(self.epoch)) - self.position

    def __iter__(self) -> Iterator[DrawKey]:
        order = self.epoch_order(self.epoch)
        while self.position < len(order):
            position = self.position
            self.position += 1
            yield DrawKey(int(order[position]), self.epoch, position)
        # A finished epoch rolls over, so iterating again gives the next epoch.
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self, num_consumed: int | None = None, epoch: int | None = None) -> dict:
        """Epoch and position to resume from.

        Args:
            num_consumed: items the training loop actually consumed this epoch;
                pass it when a DataLoader prefetches (the sampler runs ahead of
                the loop by up to workers x prefetch_factor batches).
            epoch: the epoch those items belong to; pass it with `num_consumed`,
                since prefetching may already have run the sampler into the next epoch.
        """
        return {"epoch": self.epoch if epoch is None else epoch,
                "position": self.position if num_consumed is None else num_consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def allocate_counts(total: int, ratios: np.ndarray) -> np.ndarray:
    """Split `total` into integer counts proportional to `ratios` (largest remainder)."""
    exact = ratios / ratios.sum() * total
    counts = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[:total - counts.sum()]] += 1
    return counts


class MixingSampler(_ResumableSampler):
    """Draw from several datasets (laid end to end, as in `MixedDataset`) at fixed ratios.

    Each epoch has `samples_per_epoch` draws split between the datasets by
    `ratios` (exact counts, largest remainder). Within a dataset, indices come
    from fresh permutations, so every image is seen once before any repeats.
    Draws of all datasets are then shuffled together.

    Args:
        sizes: number of items of each dataset.
        ratios: share of the draws per dataset; None = proportional to size
            (how the official pretraining mixes Objects365 and GoldG).
        samples_per_epoch: draws per epoch; None = sum of sizes.
        seed: the same seed gives the same order, epoch by epoch.
    """

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float] | None = None,
                 samples_per_epoch: int | None = None, seed: int = 0):
        super().__init__(seed)
        self.sizes = np.asarray(sizes, np.int64)
        self.ratios = np.asarray(self.sizes if ratios is None else ratios, np.float64)
        if len(self.ratios) != len(self.sizes):
            raise ValueError(f"{len(self.ratios)} ratios for {len(self.sizes)} datasets")
        if (self.ratios < 0).any() or self.ratios.sum() <= 0:
            raise ValueError(f"ratios must be non-negative and not all zero, got {list(self.ratios)}")
        if ((self.sizes == 0) & (self.ratios > 0)).any():
            raise ValueError(f"a dataset with a positive ratio is empty: sizes {list(self.sizes)}")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.samples_per_epoch = int(self.sizes.sum() if samples_per_epoch is None else samples_per_epoch)

    def epoch_length(self, epoch: int) -> int:
        return self.samples_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        counts = allocate_counts(self.samples_per_epoch, self.ratios)
        picks = []
        for size, offset, count in zip(self.sizes, self.offsets, counts):
            rounds = math.ceil(count / size) if count else 0
            local = np.concatenate([rng.permutation(size) for _ in range(rounds)] or [np.zeros(0, np.int64)])
            picks.append(offset + local[:count])
        source = np.repeat(np.arange(len(counts)), counts)
        rng.shuffle(source)
        order = np.empty(self.samples_per_epoch, np.int64)
        for dataset_index, dataset_picks in enumerate(picks):
            order[source == dataset_index] = dataset_picks
        return order


def repeat_factors(dataset: DetectionDataset, threshold: float = 0.001) -> np.ndarray:
    """LVIS repeat factors: r(c) = max(1, sqrt(t / f(c))), r(image) = max over its classes.

    f(c) is the fraction of images containing class c. Images without boxes and
    grounding records (no shared classes) get 1.

    Args:
        dataset: the training records.
        threshold: t; classes in fewer than this fraction of images are oversampled.
    """
    num_images = len(dataset)
    images_with_class = np.zeros(len(dataset.vocabulary), np.int64)
    for record in dataset.records:
        if not record.is_grounding:
            images_with_class[np.unique(record.labels)] += 1
    frequency = images_with_class / max(num_images, 1)
    class_factor = np.maximum(1.0, np.sqrt(threshold / np.maximum(frequency, 1e-12)))
    factors = np.ones(num_images)
    for i, record in enumerate(dataset.records):
        if not record.is_grounding and len(record.labels):
            factors[i] = class_factor[record.labels].max()
    return factors


class RepeatFactorSampler(_ResumableSampler):
    """Class-balanced image sampling (LVIS repeat-factor sampling), shuffled per epoch.

    Image i appears floor(r_i) times plus once more with probability frac(r_i),
    re-drawn every epoch (stochastic rounding), so the epoch length varies (the training
    loop's LR schedule counts each epoch's own steps).

    Args:
        factors: per-image repeat factors (`repeat_factors(dataset, threshold)`).
        seed: the same seed gives the same order, epoch by epoch.
    """

    def __init__(self, factors: np.ndarray, seed: int = 0):
        super().__init__(seed)
        self.factors = np.asarray(factors, np.float64)

    def _repeats(self, rng: np.random.Generator) -> np.ndarray:
        whole = np.floor(self.factors)
        return (whole + (rng.random(len(self.factors)) < self.factors - whole)).astype(np.int64)

    def epoch_length(self, epoch: int) -> int:
        return int(self._repeats(np.random.default_rng([self.seed, epoch])).sum())

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        order = np.repeat(np.arange(len(self.factors)), self._repeats(rng))
        rng.shuffle(order)
        return order


class MixedDataset(Dataset):
    """Several datasets laid end to end; item i of dataset k is at offsets[k] + i.

    Keys may be ints or `DrawKey`s; the key is forwarded with its index made local.
    Each item's "meta" gains "dataset_index" (which dataset it came from).

    Args:
        datasets: the parts, e.g. the current task and a replay buffer.
    """

    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global index -> (dataset index, local index)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a MixedDataset of {len(self)} items")
        dataset_index = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return dataset_index, int(index - self.offsets[dataset_index])

    def __getitem__(self, key: int | DrawKey) -> dict:
        draw = DrawKey(*key) if isinstance(key, tuple) else None
        dataset_index, local = self.locate(draw.index if draw else int(key))
        item = self.datasets[dataset_index][draw._replace(index=local) if draw else local]
        item["meta"] = {**item.get("meta", {}), "dataset_index": dataset_index}
        return item

    def set_mosaic(self, enabled: bool) -> None:
        """Forward to every part that has mosaic (close-mosaic for the whole mix)."""
        for dataset in self.datasets:
            if hasattr(dataset, "set_mosaic"):
                dataset.set_mosaic(enabled)

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)


class MixedRepeatFactorSampler(RepeatFactorSampler):
    """Repeat-factor sampling of the task's images, with other datasets mixed in at fixed shares.

    Each epoch the task's draws are those of `RepeatFactorSampler` (their number varies with the
    stochastic rounding); the other datasets, laid after the task as in `MixedDataset`, add draws
    so that each takes its ratio of the epoch (as `MixingSampler` allocates them); all draws are
    shuffled together.

    Args:
        factors: the task's per-image repeat factors.
        extra_sizes: number of items of each mixed-in dataset.
        extra_ratios: each one's share of every epoch's draws; they sum below 1.
        seed: the same seed gives the same order, epoch by epoch.
    """

    def __init__(self, factors: np.ndarray, extra_sizes: list[int], extra_ratios: list[float], seed: int = 0):
        super().__init__(factors, seed)
        self.extra_sizes, self.extra_ratios = list(extra_sizes), list(extra_ratios)

    def epoch_length(self, epoch: int) -> int:
        return round(super().epoch_length(epoch) / (1 - sum(self.extra_ratios)))

    def epoch_order(self, epoch: int) -> np.ndarray:
        task = super().epoch_order(epoch)
        samples = round(len(task) / (1 - sum(self.extra_ratios)))
        extras = MixingSampler(self.extra_sizes, self.extra_ratios, samples_per_epoch=samples - len(task),
                               seed=self.seed + 1)
        order = np.concatenate([task, len(self.factors) + extras.epoch_order(epoch)])
        np.random.default_rng([self.seed, epoch, 1]).shuffle(order)
        return order
