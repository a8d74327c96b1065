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
    """Mean over the batch's images of each image's own detection loss (class + box + DFL).

    No method's extra terms. Each image is normalised by its own assigned scores and
    counts once: the training criterion pools the normaliser over the batch and
    multiplies by the image and rank counts, which would scale the Fisher by up to
    batch_size^4 (the normaliser is clamped at 1) instead of averaging the gradients.
    """
    device = next(model.detector.parameters()).device
    text = model.embed_texts(batch["texts"]).to(device)
    output = model.detector(images_to_device(batch["images"], device), text)
    labels = batch["gt_labels"].to(device)
    # readers keep boxes of unknown classes as label -1; they carry no class target
    mask = batch["gt_mask"].to(device) & (labels >= 0)
    boxes, labels = batch["gt_boxes"].to(device), labels.clamp(min=0)
    total = 0.0
    for i in range(len(labels)):
        one = [[level[i:i + 1] for level in levels]
               for levels in (output.cls_logits, output.bbox_preds, output.bbox_dists)]
        total = total + model.criterion(*one, boxes[i:i + 1], labels[i:i + 1], mask[i:i + 1])["loss"]
    return total / (len(labels) * model.criterion.world_size)


def estimate_fisher(model, dataset: DetectionDataset, num_batches: int, batch_size: int, image_size: int,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the detection loss for every parameter that trains now.

    With `batch_size` > 1 the per-image gradients of a batch are averaged before squaring.

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
