"""Tiny model, batches and data for the regulariser method tests (distill, wise, ewc).

The text encoder is the hashed-character `HashTextEncoder` (tests/_hash_text.py);
`tiny_continual` assembles the tiny detector with it and the given methods;
`random_batch` is a 64-px batch in the trainer's format.
"""
from __future__ import annotations


import torch

from cl_detect.methods import ContinualModel, create_method
from cl_detect.models.registry import create_detector

from _hash_text import TEXT_DIM, HashTextEncoder


def text_encoder() -> HashTextEncoder:
    """The hashed-character text encoder of these tests (101-row table, seed 7)."""
    return HashTextEncoder(buckets=101, seed=7)


PROMPTS = ["red square", "blue circle", "green triangle", ""]
GENERAL = ["person", "car", "dog", "chair", "bottle", "cup"]


def tiny_continual(methods: list[tuple[str, dict]], seed: int = 0) -> ContinualModel:
    """Tiny YOLO-World (text dim 32) + `HashTextEncoder` + methods given as (name, options)."""
    torch.manual_seed(seed)
    detector = create_detector("yolo_world_v2_t", text_dim=TEXT_DIM)
    return ContinualModel(detector, text_encoder(), [create_method(n, o) for n, o in methods])


def random_batch(batch_size: int = 2, size: int = 64, seed: int = 0) -> dict:
    """Random images with one or two boxes each, prompts from `PROMPTS`."""
    generator = torch.Generator().manual_seed(seed)
    gt_boxes = torch.tensor([[[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0]]]).repeat(batch_size, 1, 1)
    gt_mask = torch.ones(batch_size, 2, dtype=torch.bool)
    gt_mask[1:, 1] = False
    return {"images": torch.rand(batch_size, 3, size, size, generator=generator),
            "texts": [list(PROMPTS) for _ in range(batch_size)], "gt_boxes": gt_boxes,
            "gt_labels": torch.tensor([[0, 1]]).repeat(batch_size, 1), "gt_mask": gt_mask,
            "image_ids": torch.arange(batch_size), "meta": [{} for _ in range(batch_size)]}


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Add seeded noise to every floating-point parameter (a stand-in for fine-tuning)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def train_steps(model: ContinualModel, batch: dict, steps: int, lr: float = 1e-3,
                optimizer_cls: type = torch.optim.AdamW) -> list[float]:
    """`steps` optimizer steps (AdamW unless told) on one batch; returns the total loss before each step."""
    model.train()
    optimizer = optimizer_cls([p for _, p, _ in model.named_trainable_parameters()], lr=lr)
    history = []
    for _ in range(steps):
        loss = model(batch)["loss"]
        history.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history
