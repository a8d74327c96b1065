"""Stop training with a clear message when it is going wrong.

The classic silent failure when fine-tuning YOLO-World: the class names in the
config do not match the annotations or the prompts, no prior is ever assigned,
and the box and DFL losses sit at exactly zero while training "runs".
"""
from __future__ import annotations

import math

import torch

DATA_CHECK_HINT = ("check the data with `cl-detect data check <dataset> --texts <prompts file>`: "
                   "class names, prompts and box format (xyxy vs xywh) must agree")


class TrainingError(RuntimeError):
    """Training stopped by a guard."""


def check_batch(batch: dict) -> None:
    """Every GT label must point at a non-empty prompt of its own image."""
    mask = batch["gt_mask"]
    if not mask.any():
        return
    num_texts = len(batch["texts"][0])
    labels = batch["gt_labels"][mask]
    outside = labels[(labels < 0) | (labels >= num_texts)]
    if len(outside):
        raise TrainingError(f"a box label ({int(outside[0])}) is outside the {num_texts} prompts of its image "
                            f"(images {batch['image_ids']}); vocabulary and model disagree: {DATA_CHECK_HINT}")
    for image, (texts, image_labels, image_mask) in enumerate(zip(batch["texts"], batch["gt_labels"], mask)):
        for label in image_labels[image_mask].tolist():
            if not texts[label].strip():
                raise TrainingError(f"image {batch['image_ids'][image]}: a box is labelled with the empty padding "
                                    f"prompt; {DATA_CHECK_HINT}")


class LossGuard:
    """Watches each step's losses and gradient norm.

    Args:
        patience: consecutive optimizer steps with boxes in the batch but no
            positive assignment (or exactly zero box loss) before training is stopped.
        accumulate: micro-batches per optimizer step; the guard sees each one, so it
            stops after patience x accumulate such batches in a row.
    """

    def __init__(self, patience: int = 50, accumulate: int = 1):
        self.patience, self.accumulate = patience, accumulate
        self.stuck_steps = 0  # in batches (micro-batches), as checkpoints store it

    def __call__(self, losses: dict[str, torch.Tensor], step: int, batch: dict,
                 grad_norm: torch.Tensor | None = None) -> None:
        """Check a micro-batch's losses after its backward pass, and, on the micro-batch that
        completes a step, the gradient norm before the optimizer step: a non-finite gradient
        with a finite loss would write NaN into every weight, the EMA and the next checkpoint."""
        # one host-device sync per step: the watched values are read together
        watched = {key: losses[key] for key in ("loss", "num_pos", "loss_bbox") if key in losses}
        if grad_norm is not None:
            watched["grad_norm"] = grad_norm
        device = losses["loss"].device
        stacked = torch.stack([torch.as_tensor(v).detach().to(device, torch.float64).reshape(())
                               for v in watched.values()])
        values = dict(zip(watched, stacked.tolist()))
        value = values["loss"]
        if not math.isfinite(value):
            parts = {k: float(v.detach()) for k, v in losses.items() if k.startswith("loss")}
            raise TrainingError(f"loss is {value} at step {step} (batch image ids {batch['image_ids']}, "
                                f"parts {parts}); lower the learning rate or check these images' boxes")
        if not math.isfinite(values.get("grad_norm", 0.0)):
            raise TrainingError(f"gradient norm is {values['grad_norm']} at step {step} although the loss is finite "
                                f"(last batch image ids {batch['image_ids']}); the weights were left unchanged. "
                                f"Lower the learning rate or check these images' boxes")
        has_boxes = bool(batch["gt_mask"].any())  # the batch is still on the host: no sync
        no_positives = "num_pos" in values and values["num_pos"] == 0
        zero_box = "loss_bbox" in values and values["loss_bbox"] == 0.0
        self.stuck_steps = self.stuck_steps + 1 if has_boxes and (no_positives or zero_box) else 0
        if self.stuck_steps >= self.patience * self.accumulate:
            batches = f" ({self.stuck_steps} batches)" if self.accumulate > 1 else ""
            raise TrainingError(f"no positive assignments (box and DFL losses at zero) for "
                                f"{self.stuck_steps // self.accumulate} steps{batches} although the batches have "
                                f"boxes (step {step}); {DATA_CHECK_HINT}")
