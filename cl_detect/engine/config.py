"""Training settings of one task (`TrainConfig`)."""
from __future__ import annotations

from dataclasses import dataclass

from cl_detect._config_keys import check_image_size


@dataclass
class TrainConfig:
    """How one task is trained.

    Args:
        epochs: passes over the (mixed) training set.
        batch_size: images per optimizer step per process (before accumulation).
        image_size: square training input size.
        lr, weight_decay: base AdamW/SGD settings (official fine-tuning: AdamW 2e-4, 0.05). The decay
            applied is scaled with the images per optimizer step (batch_size x accumulate x processes)
            by the official rule (`optim.scaled_weight_decay`): x total * max(round(64 / total), 1) / 64,
            so x1 at 1, 2, 4, ..., 64 images, x1.125 at 24, x0.75 at 48, x2 at 128.
        optimizer: "adamw" or "sgd".
        schedule: "linear" (the official shape) or "cosine" decay after warmup. Both move every
            optimizer step; docs/pretraining.md lists how this differs from mmyolo's schedule.
        final_lr_factor: LR at the end relative to `lr` (official 0.01).
        warmup_epochs, warmup_min_steps: warmup length = max(epochs x steps, min steps),
            capped at half the run (official: 3 epochs and 1000 steps; the defaults, 1 and 0,
            suit the short runs of a continual protocol).
        ema: keep an EMA of the detector (and of the text tower when it trains) and end with
            its weights (official).
        ema_momentum, ema_gamma: official ExpMomentumEMA 1e-4 and 2000.
        grad_clip: max gradient norm (None or 0 = off).
        accumulate: batches per optimizer step.
        close_mosaic_epochs: mosaic off for the last N epochs.
        mosaic: mosaic augmentation on at all.
        num_texts: prompts per image (positives + negatives, '' padded).
        cls_loss: "bce" (official) or "focal"; focal_gamma, focal_alpha for focal.
        class_balanced: repeat-factor sampling of images with rare classes.
        num_workers: data loader processes.
        amp: bf16 autocast on CUDA (on a CPU only with `amp_cpu`).
        amp_cpu: with `amp`, bf16 autocast on a CPU too. Off by default, so CPU runs
            stay float32 and comparable; about 1.75x faster steps on a CPU with bf16
            units (AVX512_BF16 or AMX, docs/performance.md), slower on one without.
        seed: seeds sampling, augmentation and initialisation.
        checkpoint_every_steps: also checkpoint inside an epoch (0 = only at epoch ends).
        log_every: steps between log rows.
        guard_patience: optimizer steps without positives (boxes present) before stopping.
        device: "cuda", "cuda:N", "cpu" or "auto" (another name is an error when the config is read).
    """

    epochs: int = 10
    batch_size: int = 16
    image_size: int = 640
    lr: float = 2e-4
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    schedule: str = "linear"
    final_lr_factor: float = 0.01
    warmup_epochs: float = 1.0
    warmup_min_steps: int = 0
    ema: bool = True
    ema_momentum: float = 1e-4
    ema_gamma: float = 2000.0
    grad_clip: float | None = 10.0
    accumulate: int = 1
    close_mosaic_epochs: int = 0
    mosaic: bool = True
    num_texts: int = 80
    cls_loss: str = "bce"
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    class_balanced: bool = False
    num_workers: int = 0
    amp: bool = True
    amp_cpu: bool = False
    seed: int = 0
    checkpoint_every_steps: int = 0
    log_every: int = 10
    guard_patience: int = 50
    device: str = "auto"

    def __post_init__(self):
        too_small = [f"{name} = {getattr(self, name)}" for name in ("epochs", "batch_size", "accumulate", "num_texts")
                     if getattr(self, name) < 1]
        if too_small:
            raise ValueError(f"epochs, batch_size, accumulate and num_texts must be >= 1, got {', '.join(too_small)}")
        # a negative lr or grad_clip (clip_grad_norm_ then flips the gradient) trains uphill without a word;
        # log_every 0 stopped the first step with "integer modulo by zero"
        out_of_range = [f"{name} = {getattr(self, name)} (at least {least})" for name, least in (
            ("lr", 0), ("weight_decay", 0), ("final_lr_factor", 0), ("warmup_epochs", 0), ("warmup_min_steps", 0),
            ("grad_clip", 0), ("num_workers", 0), ("checkpoint_every_steps", 0), ("log_every", 1))
            if getattr(self, name) is not None and getattr(self, name) < least]
        if not 0 <= self.ema_momentum <= 1:
            out_of_range.append(f"ema_momentum = {self.ema_momentum} (between 0 and 1)")
        if out_of_range:
            raise ValueError(f"train setting(s) out of range: {', '.join(out_of_range)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.cls_loss not in ("bce", "focal"):
            raise ValueError(f"cls_loss must be 'bce' or 'focal', got {self.cls_loss!r}")
        if not 0 <= self.close_mosaic_epochs <= self.epochs:
            raise ValueError("close_mosaic_epochs must be between 0 and epochs")
        check_image_size(self.image_size)
        check_device_name(self.device, "device")


def check_device_name(device: str, where: str) -> None:
    """Raise ValueError unless `device` is 'auto' or a name torch reads ('cpu', 'cuda', 'cuda:N');
    whether this machine has it is `check_device_available`'s question."""
    if device == "auto":
        return
    import torch
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{where} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None


def check_device_available(device: str, where: str, fix: str = "`cl-detect run --device cpu`") -> None:
    """Raise ValueError when `device` names a CUDA device this machine lacks.

    The name itself is checked when the config is read; whether the machine has the device is
    known only where it runs, and without this check a run stopped deep inside torch ("Found no
    NVIDIA driver") after the data and the base model were loaded.

    Args:
        device: a `TrainConfig.device`.
        where: names the setting in the message, e.g. "protocol 'x' train.device".
        fix: how the command at hand sets another device.
    """
    import torch

    if device == "auto" or not device.startswith("cuda"):
        return
    count = torch.cuda.device_count()
    index = torch.device(device).index or 0
    if index >= count:
        raise ValueError(f"{where} is {device!r}, but this machine has {count} CUDA device(s); use 'cpu' or 'auto' "
                         f"({fix}), or run where that GPU is")
