"""Pretrain the synthetic protocol's base model: a small YOLO-World on the base vocabulary.

The official recipe at CPU scale: full training of the detector (`finetune`,
text tower frozen) on every class of the synthetic world's `base` split with
AdamW, warmup, linear decay, mosaic (off for the last epoch) and the EMA,
through the same `train_one_task` the continual runs use. The checkpoint
records the base test AP in its meta, so a reused cache says what it is.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from cl_detect.data.readers import read_dataset
from cl_detect.engine.config import TrainConfig
from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import resolve_device, train_one_task
from cl_detect.eval.detector_eval import evaluate_detector
from cl_detect.methods import ContinualModel, create_method
from cl_detect.models.checkpoint import save_model
from cl_detect.models.registry import create_detector
from cl_detect.models.text_encoders import create_text_encoder


def pretrain_base_model(world_dir: str | Path, out_path: str | Path, detector: str = "yolo_world_v2_t",
                        text_encoder: str = "minilm", epochs: int = 12, batch_size: int = 16,
                        image_size: int = 96, lr: float = 2e-3, num_texts: int = 16, max_images: int | None = None,
                        seed: int = 0, device: str = "auto", made_with: dict | None = None) -> dict:
    """Train a detector from scratch on the base split and save it as a cl_detect checkpoint.

    Args:
        world_dir: a synthetic world (`write_synthetic_world`).
        out_path: checkpoint to write; training logs go to `<out_path stem>_train/`.
        detector: registered detector name.
        text_encoder: text encoder spec (frozen; stored in the checkpoint).
        epochs, batch_size, image_size, lr: training settings.
        num_texts: prompts per training image (positives + sampled negatives).
        max_images: use only the first N base training images.
        seed: initialisation and sampling seed.
        device: "cpu", "cuda" or "auto".
        made_with: recorded in the meta as is (`prepare_protocol` compares it to reuse a cache).

    Returns:
        The checkpoint's meta: settings, base test AP, wall time.
    """
    world_dir, out_path = Path(world_dir), Path(out_path)
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_set = read_dataset(world_dir / "base" / "train.json")
    if max_images is not None:
        train_set.records = train_set.records[:max_images]
    encoder = create_text_encoder(text_encoder)
    model = ContinualModel(create_detector(detector, text_dim=encoder.dim), encoder, [create_method("finetune")])
    steps = epochs * (len(train_set) // batch_size)
    # the official EMA time constant (2000 steps) is longer than this whole run: scale it to the run
    config = TrainConfig(epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr, num_texts=num_texts,
                         warmup_epochs=1.0, close_mosaic_epochs=1, ema_gamma=max(steps / 5, 1.0), seed=seed,
                         device=device, amp=True, log_every=20)
    dataset, sampler = build_task_training_set(train_set, [], config)
    train_dir = out_path.parent / f"{out_path.stem}_train"
    result = train_one_task(model, dataset, config, train_dir, sampler=sampler, resume=True)
    stats = evaluate_detector(model.detector, model.text_encoder, read_dataset(world_dir / "base" / "test.json"),
                              image_size, batch_size=32)
    meta = {"recipe": "cl_detect.bench.demo_base.pretrain_base_model", "world": str(world_dir),
            "world_seed": json.loads((world_dir / "world.json").read_text())["seed"], "detector": detector,
            "vocabulary": list(train_set.vocabulary.names), "train_images": len(train_set), "epochs": epochs,
            "batch_size": batch_size, "image_size": image_size, "lr": lr, "seed": seed, "steps": result.steps,
            "base_test_ap": float(stats["AP"]), "wall_time_s": time.perf_counter() - start,
            "device": str(resolve_device(device)), "made_with": made_with}
    save_model(out_path, model.detector.cpu(), text_encoder, meta=meta)
    (train_dir / "checkpoint.pt").unlink(missing_ok=True)  # the saved model is all that is needed now
    return meta
