"""Diagonal empirical Fisher of the detection loss over a task's training images.

The images go through the official test preprocessing (letterbox, no
augmentation) with each image's full vocabulary as prompts, and the model is
in eval mode, so the estimate is deterministic and BatchNorm statistics are
left untouched. Gradients are taken with `torch.autograd.grad`, leaving the
parameters' `.grad` alone.
"""
from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import Subset

from cl_detect.data.loader import EvalDataset, build_eval_loader
from cl_detect.data.preprocess import images_to_device
from cl_detect.data.records import DetectionDataset


def detection_loss(model, batch: dict) -> torch.Tensor:
    """The detector's own loss (class + box + DFL) on a batch, without any method's extra terms."""
    device = next(model.detector.parameters()).device
    text = model.embed_texts(batch["texts"]).to(device)
    output = model.detector(images_to_device(batch["images"], device), text)
    labels = batch["gt_labels"].to(device)
    # readers keep boxes of unknown classes as label -1; they carry no class target
    mask = batch["gt_mask"].to(device) & (labels >= 0)
    losses = model.criterion(output.cls_logits, output.bbox_preds, output.bbox_dists,
                             batch["gt_boxes"].to(device), labels.clamp(min=0), mask)
    return losses["loss"]


def estimate_fisher(model, dataset: DetectionDataset, num_batches: int, batch_size: int, image_size: int,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the detection loss for every parameter that trains now.

    Args:
        model: the ContinualModel (its trainer decides which parameters train).
        dataset: the finished task's training data.
        num_batches: at most this many batches.
        batch_size: images per batch.
        image_size: letterbox size.
        seed: which images (a seeded random subset) are used.

    Returns:
        Parameter name -> Fisher diagonal (CPU float32, same shape as the parameter).
    """
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("ewc: no parameter trains, so there is nothing to consolidate")
    if len(dataset) == 0:
        raise ValueError(f"ewc: the task's training set {dataset.source} is empty")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    subset = Subset(EvalDataset(dataset, image_size), order[:num_batches * batch_size].tolist())
    loader = build_eval_loader(subset, batch_size)
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params}
    was_training, count = model.training, 0
    model.eval()
    try:
        for batch in islice(loader, num_batches):
            with torch.enable_grad():
                grads = torch.autograd.grad(detection_loss(model, batch), [p for _, p in params], allow_unused=True)
            for (name, _), grad in zip(params, grads):
                if grad is not None:
                    sums[name] += grad.detach().float().pow(2)
            count += 1
    finally:
        model.train(was_training)
    return {name: (total / count).cpu() for name, total in sums.items()}
