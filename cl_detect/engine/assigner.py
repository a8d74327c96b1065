"""Task-aligned assignment of priors to ground-truth boxes (TOOD / YOLOv8 / YOLO-World).

Semantics follow section 7 of ../shared/specs/yolo_world_v2.md (the mmyolo
`BatchTaskAlignedAssigner` used by YOLO-World): alignment metric
t = s^alpha * CIoU^beta between every GT and every prior's predicted box, the
top-k priors by t among those whose centre lies strictly inside the GT become
its positives, a prior claimed by several GTs keeps the one with the highest
CIoU, and the soft class target is t normalised per GT so that its best prior
gets that GT's highest CIoU.

Everything is computed on (B, M, A) tensors at once: no loop over images or
boxes, so the cost is a handful of kernels whatever the batch.

One deliberate difference from mmyolo: when a prior is claimed by several
GTs, mmyolo takes the argmax of CIoU over *all* GTs of the image, which can
hand the prior to a GT that never selected it (even a padding row). Here the
argmax runs over the claiming GTs only, which is what the spec describes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from cl_detect.engine._box_ops import bbox_ciou


class AssignResult(NamedTuple):
    """Per-prior targets produced by `TaskAlignedAssigner`.

    Attributes:
        labels: (B, A) long, class of the assigned GT (0 where background).
        boxes: (B, A, 4) xyxy pixels of the assigned GT (GT 0's box where background).
        scores: (B, A, C) soft class targets, zero rows for background.
        fg_mask: (B, A) bool, True for positive priors.
        gt_index: (B, A) long, index of the assigned GT (0 where background).
    """

    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    fg_mask: torch.Tensor
    gt_index: torch.Tensor


class TaskAlignedAssigner:
    """Batched task-aligned assigner.

    Args:
        topk: positives selected per GT before de-duplication.
        alpha: exponent of the classification score in the alignment metric.
        beta: exponent of the CIoU in the alignment metric.
        eps: margin for "strictly inside" and guard in the normalisation.
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> AssignResult:
        """Assign every prior of every image to at most one GT.

        Args:
            pred_scores: (B, A, C) predicted class probabilities (after sigmoid).
            pred_boxes: (B, A, 4) predicted xyxy boxes in pixels.
            points: (A, 2) prior centres in pixels.
            gt_labels: (B, M) long class indices in [0, C) (any value where padded).
            gt_boxes: (B, M, 4) xyxy GT boxes in pixels.
            gt_mask: (B, M) bool, False for padding rows.

        Returns:
            The per-prior `AssignResult`.

        Raises:
            ValueError: an unpadded GT label outside [0, C), naming its image and row (checked for CPU
                tensors; on an accelerator the trainer's `check_batch` checks the batch on the host).
        """
        batch, num_priors, num_classes = pred_scores.shape
        num_gt = gt_boxes.shape[1]
        if num_gt == 0:
            return _empty_result(pred_scores, gt_boxes.dtype)
        if gt_labels.device.type == "cpu":
            _check_labels(gt_labels, gt_mask, num_classes)

        # Padding rows may carry any label; clamp so the gathers stay in range.
        labels = torch.where(gt_mask, gt_labels, torch.zeros_like(gt_labels)).long()
        overlaps, metric = self._alignment(pred_scores, pred_boxes, labels, gt_boxes)
        candidates = self._inside_gt(points, gt_boxes) & gt_mask[..., None]

        k = min(self.topk, num_priors)
        topk_index = (metric * candidates).topk(k, dim=-1).indices
        in_topk = torch.zeros_like(candidates).scatter_(-1, topk_index, True)
        pos_mask = in_topk & candidates

        # A prior claimed by several GTs keeps the claimant with the highest CIoU.
        fg_mask = pos_mask.any(dim=1)
        claimed_overlaps = torch.where(pos_mask, overlaps, torch.full_like(overlaps, -1.0))
        gt_index = claimed_overlaps.argmax(dim=1)
        pos_mask = F.one_hot(gt_index, num_gt).transpose(1, 2).bool() & fg_mask[:, None, :]

        # Normalise per GT: its best positive gets t = that GT's best CIoU.
        metric = metric * pos_mask
        max_metric = metric.amax(dim=-1, keepdim=True)
        max_overlap = (overlaps * pos_mask).amax(dim=-1, keepdim=True)
        normalised = (metric * max_overlap / (max_metric + self.eps)).amax(dim=1)

        assigned_labels = labels.gather(1, gt_index)
        assigned_boxes = gt_boxes.gather(1, gt_index[..., None].expand(batch, num_priors, 4))
        scores = F.one_hot(assigned_labels, num_classes).to(pred_scores.dtype)
        scores = scores * (normalised * fg_mask)[..., None]
        assigned_labels = assigned_labels * fg_mask
        return AssignResult(assigned_labels, assigned_boxes, scores, fg_mask, gt_index * fg_mask)

    def _alignment(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, labels: torch.Tensor,
                   gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CIoU (clamped at 0) and alignment metric of every (GT, prior) pair, both (B, M, A)."""
        num_priors = pred_scores.shape[1]
        gt_scores = pred_scores.gather(2, labels[:, None, :].expand(-1, num_priors, -1)).transpose(1, 2)
        overlaps = bbox_ciou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]).clamp(min=0)
        metric = gt_scores.pow(self.alpha) * overlaps.pow(self.beta)
        return overlaps, metric

    def _inside_gt(self, points: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """(B, M, A) bool: prior centre strictly inside the GT box."""
        left_top = points[None, None] - gt_boxes[:, :, None, :2]
        right_bottom = gt_boxes[:, :, None, 2:] - points[None, None]
        return torch.cat([left_top, right_bottom], dim=-1).amin(dim=-1) > self.eps


def _check_labels(gt_labels: torch.Tensor, gt_mask: torch.Tensor, num_classes: int) -> None:
    """Refuse a real (unpadded) GT label outside [0, num_classes) with a message, not an index error.

    Only called on CPU tensors, where reading the result costs nothing: on an accelerator it would
    add a host-device sync to every training step, and the trainer's `check_batch` already checks
    each batch on the host before it is moved there.
    """
    real = gt_mask.bool()
    labels = gt_labels[real]
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        image, row = real.nonzero()[bad.nonzero()[0, 0]].tolist()
        raise ValueError(f"GT label {int(labels[bad][0])} (image {image}, GT row {row}) is outside the "
                         f"{num_classes} prompts of the batch: labels index each image's texts, 0..{num_classes - 1}; "
                         f"mark padding rows False in gt_mask, or pass more texts")


def _empty_result(pred_scores: torch.Tensor, box_dtype: torch.dtype) -> AssignResult:
    """All-background result for a batch without any GT rows."""
    batch, num_priors, _ = pred_scores.shape
    device = pred_scores.device
    zeros_long = torch.zeros(batch, num_priors, dtype=torch.long, device=device)
    return AssignResult(
        labels=zeros_long,
        boxes=torch.zeros(batch, num_priors, 4, dtype=box_dtype, device=device),
        scores=torch.zeros_like(pred_scores),
        fg_mask=torch.zeros(batch, num_priors, dtype=torch.bool, device=device),
        gt_index=zeros_long.clone(),
    )
