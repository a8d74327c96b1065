"""Optimizer parameter groups and the warmup + decay learning-rate schedule.

No weight decay on norms, biases and `logit_scale`, and the decay scaled with the
total batch (official recipe); each parameter may carry an LR multiplier (text tower x0.01 when it trains, per-part
multipliers of the finetune method).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

NO_DECAY_NAMES = ("bias", "logit_scale", "embeddings")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights (1-D), biases and scalar/logit-scale parameters get no weight decay."""
    return param.ndim <= 1 or name.endswith(NO_DECAY_NAMES) or ".norm" in name or ".bn." in name


def parameter_groups(named_params: Iterable[tuple[str, nn.Parameter, float]], lr: float,
                     weight_decay: float) -> list[dict]:
    """Group (name, parameter, lr multiplier) triples by (decay, multiplier)."""
    groups: dict[tuple[bool, float], dict] = {}
    for name, param, multiplier in named_params:
        decay = not is_no_decay(name, param)
        key = (decay, float(multiplier))
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr": lr * multiplier, "initial_lr": lr * multiplier,
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters: the method froze everything")
    return list(groups.values())


def scaled_weight_decay(weight_decay: float, total_batch_size: int, base_total_batch_size: int = 64) -> float:
    """Weight decay for `total_batch_size` images per optimizer step (official YOLOv5/YOLO-World rule).

    The official optimizer constructor multiplies the configured decay by
    total * k / 64 with k = max(round(64 / total), 1): x1 for 1, 2, 4, ... 64 images,
    near 1 for other totals up to 64 (x1.125 at 24, x0.75 at 48), linear above 64
    (x2 for the 8 x 16 images of the official runs).
    """
    accumulate = max(round(base_total_batch_size / total_batch_size), 1)
    return weight_decay * total_batch_size * accumulate / base_total_batch_size


def build_optimizer(groups: list[dict], name: str, lr: float, momentum: float = 0.937) -> torch.optim.Optimizer:
    """AdamW (official pretraining/fine-tuning) or SGD with Nesterov momentum."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, final_factor: float) -> float:
    """Multiplier of the base LR at optimizer step `step`.

    Linear warmup from 0 over `warmup_steps`, then linear or cosine decay from 1
    to `final_factor` at `total_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    if schedule == "linear":
        return 1.0 - progress * (1.0 - final_factor)
    if schedule == "cosine":
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, schedule: str,
                    final_factor: float) -> torch.optim.lr_scheduler.LambdaLR:
    if schedule not in ("linear", "cosine"):  # fail now, not at the first step after warmup
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule, final_factor))
