"""A tiny, fully deterministic training setup for engine tests (CPU, seconds).

`HashTextEncoder` embeds strings with a fixed hashed character table (no
downloads, no model files); `tiny_world` writes a 64-px synthetic world once per
folder; `tiny_model` assembles detector + encoder + full fine-tuning.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cl_detect.data.readers import read_dataset
from cl_detect.data.synthetic import write_synthetic_world
from cl_detect.engine.config import TrainConfig
from cl_detect.methods import ContinualModel, create_method
from cl_detect.models.registry import create_detector

from _hash_text import TEXT_DIM, HashTextEncoder



def tiny_world(root: Path, num_train: int = 16, num_test: int = 8, image_size: int = 64) -> Path:
    """Write (once) a small synthetic world under `root`; return its folder."""
    out = Path(root) / "world"
    if not (out / "world.json").exists():
        write_synthetic_world(out, seed=0, image_size=image_size, num_base_train=num_train, num_test=num_test,
                              num_task_train=4, num_tasks=0)
    return out


def base_split(world: Path, subset: str = "train"):
    """The base split's training or test set of a world written by `tiny_world`."""
    return read_dataset(Path(world) / "base" / f"{subset}.json")


def tiny_model(seed: int = 0, text_dim: int = TEXT_DIM, methods: list | None = None) -> ContinualModel:
    """Tiny detector + hashed text encoder + full fine-tuning, initialised from `seed`."""
    torch.manual_seed(seed)
    detector = create_detector("yolo_world_v2_t", text_dim=text_dim)
    return ContinualModel(detector, HashTextEncoder(text_dim), methods or [create_method("finetune")])


def tiny_config(**changes) -> TrainConfig:
    """Settings sized for seconds on one CPU core."""
    settings = dict(epochs=2, batch_size=4, image_size=64, lr=1e-3, num_texts=8, warmup_epochs=0.5,
                    device="cpu", log_every=1, amp=False, mosaic=True, close_mosaic_epochs=1)
    settings.update(changes)
    return TrainConfig(**settings)
