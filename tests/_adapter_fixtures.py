"""Tiny model, batches and data for the lora / prompt / reparam method tests.

The text encoder is `HashTextEncoder` with its fixed linear projection, so the
text tower has a `nn.Linear` for LoRA to target. `tiny_model` is the tiny YOLO-World (text dim
32) with it and the given methods; `prompt_batch` is a 64-px batch whose images
carry their own shuffled prompt lists with '' padding, as the trainer builds them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cl_detect.data.records import DetectionDataset
from cl_detect.engine.config import TrainConfig
from cl_detect.methods import ContinualModel, create_method
from cl_detect.models.registry import create_detector

from _drawn_boxes import write_dataset
from _hash_text import TEXT_DIM, HashTextEncoder
from _regulariser_fixtures import train_steps as regulariser_train_steps

VOCABULARY = ("red thing", "green thing", "blue thing")


@torch.no_grad()
def calibrate_batchnorm(detector: torch.nn.Module, text: torch.Tensor, seed: int = 0) -> None:
    """Set BatchNorm running statistics to those of one random batch.

    A freshly initialised detector has statistics (0, 1) that do not match its
    activations; methods that freeze BatchNorm (lora, prompt) would then see
    vanishing features, unlike with a pre-trained detector.
    """
    norms = [m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    detector.train()
    detector(prompt_batch(4, seed=100 + seed)["images"], text.expand(4, -1, -1))
    for norm in norms:
        norm.momentum = 0.03


def tiny_model(methods: list[tuple[str, dict]], seed: int = 0) -> ContinualModel:
    """Tiny detector (BatchNorm calibrated) + projected `HashTextEncoder` + methods given as (name, options)."""
    torch.manual_seed(seed)
    detector = create_detector("yolo_world_v2_t", text_dim=TEXT_DIM)
    encoder = HashTextEncoder(buckets=97, seed=11, projection=True)
    calibrate_batchnorm(detector, encoder(list(VOCABULARY) + [""])[None], seed)
    return ContinualModel(detector, encoder, [create_method(n, o) for n, o in methods])


def prompt_batch(batch_size: int = 2, size: int = 64, seed: int = 0) -> dict:
    """Random images, two boxes each; per-image prompts = a shuffled vocabulary + '' padding."""
    generator = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for i in range(batch_size):
        order = torch.randperm(len(VOCABULARY), generator=generator).tolist()
        texts.append([VOCABULARY[j] for j in order] + [""])
        labels.append([order.index(0), order.index(i % 3)])  # boxes of class 0 and class i % 3
    boxes = torch.tensor([[[6.0, 6.0, 30.0, 34.0], [32.0, 24.0, 60.0, 58.0]]]).repeat(batch_size, 1, 1)
    images = torch.rand(batch_size, 3, size, size, generator=generator) * 0.2
    for b in range(batch_size):  # bright boxes, so there is something to learn
        for x1, y1, x2, y2 in boxes[b].int().tolist():
            images[b, :, y1:y2, x1:x2] = 0.9
    return {"images": images, "texts": texts, "gt_boxes": boxes, "gt_labels": torch.tensor(labels),
            "gt_mask": torch.ones(batch_size, 2, dtype=torch.bool), "image_ids": torch.arange(batch_size),
            "meta": [{} for _ in range(batch_size)]}


def train_steps(model: ContinualModel, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    """`steps` Adam steps on one batch (adapters and prompts train at a higher rate); the loss before each."""
    return regulariser_train_steps(model, batch, steps, lr, torch.optim.Adam)


def names_with_grad(model: ContinualModel, batch: dict) -> set[str]:
    """Parameters that get a non-None gradient from one backward pass (grads cleared after)."""
    model.zero_grad(set_to_none=True)
    model.train()
    model(batch)["loss"].backward()
    names = {n for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return names


@torch.no_grad()
def eval_logits(model: ContinualModel, images: torch.Tensor, texts: list[str]) -> list[torch.Tensor]:
    """Per-level class logits and box predictions (eval mode) for one prompt list shared by all images.

    The text embeddings are cast to the images' dtype, so a model moved to float64
    can be compared exactly (float32 noise grows through ~40 layers to ~1e-4).
    """
    model.eval()
    # rows cached during training were embedded in other batches (BLAS rounding differs by ~1e-7)
    model.clear_text_cache()
    model.text_encoder.clear_cache()
    embeddings = model.embed_texts([list(texts)] * len(images)).to(images.dtype)
    out = model.detector(images, embeddings)
    return out.cls_logits + out.bbox_preds


def task_dataset(root: Path, num_images: int = 4) -> DetectionDataset:
    """A few drawn-box images with classes `VOCABULARY`."""
    root.mkdir(parents=True, exist_ok=True)
    return write_dataset(root, num_images=num_images, num_classes=len(VOCABULARY))


def train_config(**changes) -> TrainConfig:
    settings = dict(epochs=1, batch_size=2, image_size=64, num_texts=4, ema=False, device="cpu", lr=1e-2,
                    warmup_epochs=0, amp=False, mosaic=False, log_every=1)
    settings.update(changes)
    return TrainConfig(**settings)
