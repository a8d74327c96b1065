"""Training and evaluation datasets over `DetectionDataset`, the batch collate and loader builders.

Determinism: every training item seeds its own `numpy.random.Generator` from
(dataset seed, epoch, position, index) — the `DrawKey` the sampler yields —
so the same seed gives the same batches with 0 or N workers, and a resumed
sampler replays the same augmentations. Workers additionally seed the global
`numpy` / `random` generators from torch's per-worker base seed, for any
third-party code that uses them.
"""
from __future__ import annotations

import random
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cl_detect._config_keys import check_image_size
from cl_detect.data.augment import Sample, letterbox_sample
from cl_detect.data.preprocess import load_image_bgr, to_uint8_tensor
from cl_detect.data.records import DetectionDataset, DetectionRecord
from cl_detect.data.sampling import DrawKey, MixingSampler
from cl_detect.data.text_sampling import (
    PAD_TEXT, class_texts_of, equal_text_index, eval_texts, sample_texts, unique_phrases)
from cl_detect.data.transforms import AugmentConfig, TrainAugment


def load_sample(record: DetectionRecord) -> Sample:
    """Read a record's image (BGR) into a `Sample`; grounding phrases are de-duplicated."""
    texts, labels = (None, record.labels) if not record.is_grounding else unique_phrases(record.phrases, record.labels)
    return Sample(image=load_image_bgr(record.image_path), boxes=record.boxes, labels=labels,
                  ignore_boxes=record.ignore_boxes, texts=texts, image_id=record.image_id)


class TrainDataset(Dataset):
    """Augmented training items with per-image sampled prompts.

    Each item is a dict: "image" (3, S, S) uint8 RGB (`images_to_device` makes it
    float in [0, 1] on the model's device); "boxes" (K, 4) float xyxy input pixels;
    "labels" (K,) long into "texts"; "texts"
    list[str] of `num_texts` prompts ('' padded); "image_id" int; "meta" dict
    with "ignore_boxes" (M, 4) and "image_path".

    Args:
        dataset: the records and their vocabulary.
        augment: augmentation settings; None = the official recipe at 640.
        num_texts: prompts per image (positives + negatives + '' padding).
        use_synonyms: pick a random synonym per sampled class.
        seed: base seed of all augmentation and text sampling.
    """

    def __init__(self, dataset: DetectionDataset, augment: AugmentConfig | None = None, num_texts: int = 80,
                 use_synonyms: bool = False, seed: int = 0):
        self.dataset = dataset
        self.augment = TrainAugment(augment or AugmentConfig())
        self.num_texts = num_texts
        self.use_synonyms = use_synonyms
        self.seed = seed
        self._class_texts = class_texts_of(dataset.vocabulary)
        self._equal_index = equal_text_index(self._class_texts)  # once, not per image
        # [epoch, mosaic on] in shared memory: persistent workers see set_epoch / set_mosaic
        # made in the main process between epochs without being restarted.
        self._state = torch.tensor([0, int(self.augment.config.mosaic)], dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)

    def set_mosaic(self, enabled: bool) -> None:
        """Turn mosaic on or off (close-mosaic: off for the last epochs). Call between epochs."""
        self._state[1] = int(enabled)

    @property
    def mosaic_enabled(self) -> bool:
        return bool(self._state[1])

    def set_epoch(self, epoch: int) -> None:
        """Epoch used to seed items requested by plain int index (samplers pass it in `DrawKey`)."""
        self._state[0] = epoch

    def _generator(self, key: int | DrawKey) -> tuple[int, np.random.Generator]:
        if isinstance(key, tuple):
            draw = DrawKey(*key)
            return draw.index, np.random.default_rng([self.seed, draw.epoch, draw.position, draw.index])
        index = int(key)
        return index, np.random.default_rng([self.seed, int(self._state[0]), index])

    def __getitem__(self, key: int | DrawKey) -> dict:
        index, rng = self._generator(key)
        num_images = self.augment.images_needed(self.mosaic_enabled, rng)
        partners = rng.integers(len(self.dataset), size=num_images - 1).tolist()
        samples = [load_sample(self.dataset.records[i]) for i in [index, *partners]]
        sample = self.augment(samples, rng)
        if sample.texts is None:
            class_texts, equal_index = self._class_texts, self._equal_index
        else:  # grounding: the image's own phrases
            class_texts, equal_index = [(t,) for t in sample.texts], None
        try:
            sampled = sample_texts(sample.labels, class_texts, rng, self.num_texts, self.use_synonyms, equal_index)
        except ValueError as error:
            paths = ", ".join(self.dataset.records[i].image_path for i in [index, *partners])
            raise ValueError(f"training image {paths}: {error}") from None
        return {
            "image": to_uint8_tensor(sample.image),
            "boxes": torch.from_numpy(np.ascontiguousarray(sample.boxes[sampled.keep])),
            "labels": torch.from_numpy(sampled.labels),
            "texts": sampled.texts,
            "image_id": sample.image_id,
            "meta": {"ignore_boxes": torch.from_numpy(sample.ignore_boxes),
                     "image_path": self.dataset.records[index].image_path},
        }


class EvalDataset(Dataset):
    """Letterboxed evaluation items (the official test pipeline) with the full vocabulary.

    Each item: "image" (3, S, S) uint8 RGB; "boxes"/"labels" the ground truth in input
    pixels / vocabulary labels; "texts" the vocabulary names in order (a
    grounding record's phrases); "image_id"; "meta" with "letterbox"
    (`LetterboxInfo`, to map detections back) and "image_path".

    Args:
        dataset: the records and their vocabulary.
        image_size: S.
    """

    def __init__(self, dataset: DetectionDataset, image_size: int = 640):
        check_image_size(image_size)
        self.dataset = dataset
        self.image_size = image_size
        self._texts = eval_texts(dataset.vocabulary)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        record = self.dataset.records[index]
        sample, info = letterbox_sample(load_sample(record), self.image_size)
        return {
            "image": to_uint8_tensor(sample.image),
            "boxes": torch.from_numpy(sample.boxes),
            "labels": torch.from_numpy(sample.labels),
            "texts": list(sample.texts) if sample.texts is not None else list(self._texts),
            "image_id": record.image_id,
            "meta": {"letterbox": info, "image_path": record.image_path},
        }


def collate_detection(batch: list[dict]) -> dict:
    """Stack images and pad boxes and prompts to the batch maximum.

    Args:
        batch: items of `TrainDataset` / `EvalDataset`.

    Returns:
        {"images": (B, 3, S, S) uint8, "texts": B lists of N strings ('' padded),
        "gt_boxes": (B, M, 4) float (zeros where padded), "gt_labels": (B, M)
        long (0 where padded), "gt_mask": (B, M) bool (True = real box),
        "image_ids": (B,) long, "meta": list of the items' meta dicts}.
    """
    max_boxes = max(len(item["boxes"]) for item in batch)
    max_texts = max(len(item["texts"]) for item in batch)
    gt_boxes = torch.zeros(len(batch), max_boxes, 4)
    gt_labels = torch.zeros(len(batch), max_boxes, dtype=torch.long)
    gt_mask = torch.zeros(len(batch), max_boxes, dtype=torch.bool)
    for i, item in enumerate(batch):
        count = len(item["boxes"])
        gt_boxes[i, :count] = item["boxes"]
        gt_labels[i, :count] = item["labels"]
        gt_mask[i, :count] = True
    return {
        "images": torch.stack([item["image"] for item in batch]),
        "texts": [list(item["texts"]) + [PAD_TEXT] * (max_texts - len(item["texts"])) for item in batch],
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "gt_mask": gt_mask,
        "image_ids": torch.tensor([item["image_id"] for item in batch], dtype=torch.long),
        "meta": [item["meta"] for item in batch],
    }


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed `numpy` and `random` from torch's per-worker seed.

    The worker also ignores SIGINT. A terminal's Ctrl-C reaches every process of its group, and the
    main process decides what it does (training finishes its step and checkpoints it, which needs the
    step's remaining micro-batches); the workers end when the main process shuts the loader down.
    Set here, not inherited, so it holds whatever the start method (fork, or forkserver by default
    from Python 3.14 on)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _loader_kwargs(num_workers: int, pin_memory: bool | None, seed: int) -> dict:
    kwargs = {"num_workers": num_workers, "collate_fn": collate_detection, "worker_init_fn": seed_worker,
              "generator": torch.Generator().manual_seed(seed),
              "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=2)
    return kwargs


def build_train_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, sampler: Sampler | None = None,
                       seed: int = 0, drop_last: bool = True, pin_memory: bool | None = None) -> DataLoader:
    """DataLoader for training.

    Args:
        dataset: a `TrainDataset` or a `MixedDataset` of them.
        batch_size: images per batch.
        num_workers: loader processes (0 = load in the main process).
        sampler: defaults to a shuffling `MixingSampler` over the one dataset;
            keep a handle to it for `state_dict()` when resuming.
        seed: seeds the default sampler and torch's worker base seeds.
        drop_last: drop the last incomplete batch.
        pin_memory: None = when CUDA is available.
    """
    sampler = MixingSampler([len(dataset)], seed=seed) if sampler is None else sampler
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      **_loader_kwargs(num_workers, pin_memory, seed))


def build_eval_loader(dataset: EvalDataset, batch_size: int, num_workers: int = 0,
                      pin_memory: bool | None = None) -> DataLoader:
    """DataLoader for evaluation: in order, nothing dropped."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                      **_loader_kwargs(num_workers, pin_memory, seed=0))
