"""Tiny model, batches and data for the regulariser method tests (distill, wise, ewc).

`CharHashEncoder` is a deterministic text encoder (hashed characters, dim 32);
`tiny_continual` assembles the tiny detector with it and the given methods;
`random_batch` is a 64-px batch in the trainer's format.
"""
from __future__ import annotations

import zlib

import torch

from cl_detect.methods import ContinualModel, create_method
from cl_detect.models.registry import create_detector
from cl_detect.models.text_encoders import TextEncoder

TEXT_DIM = 32
PROMPTS = ["red square", "blue circle", "green triangle", ""]
GENERAL = ["person", "car", "dog", "chair", "bottle", "cup"]


class CharHashEncoder(TextEncoder):
    """Sum of fixed random vectors indexed by a CRC of (position, character)."""

    def __init__(self, dim: int = TEXT_DIM, buckets: int = 101):
        super().__init__(dim)
        table = torch.randn(buckets, dim, generator=torch.Generator().manual_seed(7))
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def encode(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            ids = [zlib.crc32(f"{i}:{c}".encode()) % len(self.table) for i, c in enumerate(text or "<pad>")]
            rows.append(self.table[ids].sum(0))
        return torch.stack(rows)


def tiny_continual(methods: list[tuple[str, dict]], seed: int = 0) -> ContinualModel:
    """Tiny YOLO-World (text dim 32) + `CharHashEncoder` + methods given as (name, options)."""
    torch.manual_seed(seed)
    detector = create_detector("yolo_world_v2_t", text_dim=TEXT_DIM)
    return ContinualModel(detector, CharHashEncoder(), [create_method(n, o) for n, o in methods])


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


def train_steps(model: ContinualModel, batch: dict, steps: int, lr: float = 1e-3) -> list[float]:
    """`steps` AdamW steps on one batch; returns the total loss before each step."""
    model.train()
    optimizer = torch.optim.AdamW([p for _, p, _ in model.named_trainable_parameters()], lr=lr)
    history = []
    for _ in range(steps):
        loss = model(batch)["loss"]
        history.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history
