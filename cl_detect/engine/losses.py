"""YOLO-World training loss: task-aligned assignment, BCE (or focal), CIoU and DFL.

Follows section 7 of ../shared/specs/yolo_world_v2.md (the official YOLOv8 /
YOLO-World recipe):

    S         = max(sum of assigned soft scores, 1)
    loss_cls  = 0.5   * sum_{priors, classes} BCE(logit, soft target) / S
    loss_bbox = 7.5   * sum_pos (1 - CIoU(pred, gt)) * w / S        (stride units)
    loss_dfl  = 0.375 * sum_pos sum_sides DFL(dist logits, gt distance) * w / S

with w the assigned score summed over classes, and every part multiplied by
num_imgs * world_size (the official convention: gradients are averaged over
images and ranks later, so the normaliser S is per batch, not per image).
The loss is computed in at least float32 so bf16 autocast does not hurt the
pow(6) in the metric or the log-sum-exps.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cl_detect.engine._box_ops import bbox_ciou, decode_boxes, encode_distances, make_priors
from cl_detect.engine.assigner import AssignResult, TaskAlignedAssigner

__all__ = ["YOLOWorldLoss", "bbox_ciou", "decode_boxes", "distribution_focal_loss", "make_priors",
           "soft_sigmoid_focal_loss"]

STRIDES = (8, 16, 32)


def distribution_focal_loss(dist_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss (Li et al., Generalized Focal Loss, 2020), unreduced.

    The target distance t is split between its two neighbouring bins:
    CE(left) * (right - t) + CE(right) * (t - left).

    Args:
        dist_logits: (..., reg_max) bin logits.
        targets: (...) distances in [0, reg_max - 1) (bin units).

    Returns:
        (...) loss per distance.
    """
    left = targets.long()
    right = left + 1
    log_probs = dist_logits.log_softmax(dim=-1)
    left_nll = -log_probs.gather(-1, left[..., None]).squeeze(-1)
    right_nll = -log_probs.gather(-1, right[..., None]).squeeze(-1)
    return left_nll * (right.to(targets.dtype) - targets) + right_nll * (targets - left.to(targets.dtype))


def soft_sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
                            alpha: float = 0.25) -> torch.Tensor:
    """Sigmoid focal loss for soft targets, unreduced.

    Quality-focal style: BCE(logit, t) * |t - sigmoid(logit)|^gamma (Li et al.,
    Generalized Focal Loss), times alpha_t = alpha * t + (1 - alpha) * (1 - t).
    For hard targets (t in {0, 1}) this is exactly the standard focal loss of
    Lin et al. (torchvision's `sigmoid_focal_loss`); for the soft IoU-aware
    targets of the assigner the modulating factor vanishes when the predicted
    probability equals the target, which the standard (1 - p_t)^gamma does not.

    Args:
        logits: class logits.
        targets: soft targets in [0, 1], same shape.
        gamma: focusing exponent.
        alpha: weight of the positive side; a negative value disables alpha_t.

    Returns:
        Loss per element, same shape as `logits`.
    """
    prob = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = loss * (targets - prob).abs().pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


class YOLOWorldLoss(nn.Module):
    """The official YOLO-World / YOLOv8 detection loss on per-level head outputs.

    Args:
        reg_max: DFL bins per side.
        topk: assigner positives per GT.
        alpha: assigner score exponent.
        beta: assigner CIoU exponent.
        cls_weight: weight of the classification part.
        bbox_weight: weight of the CIoU part.
        dfl_weight: weight of the DFL part.
        world_size: number of data-parallel ranks (the trainer passes it under DDP).
        cls_loss: "bce" (official) or "focal" (`soft_sigmoid_focal_loss`).
        focal_gamma: focal exponent when `cls_loss="focal"`.
        focal_alpha: focal positive weight when `cls_loss="focal"` (< 0 disables).
        strides: stride of each level, in level order.
    """

    def __init__(self, reg_max: int = 16, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 cls_weight: float = 0.5, bbox_weight: float = 7.5, dfl_weight: float = 0.375,
                 world_size: int = 1, cls_loss: str = "bce", focal_gamma: float = 2.0,
                 focal_alpha: float = 0.25, strides: Sequence[int] = STRIDES):
        super().__init__()
        if cls_loss not in ("bce", "focal"):
            raise ValueError(f"cls_loss must be 'bce' or 'focal', got {cls_loss!r}")
        self.reg_max = reg_max
        self.assigner = TaskAlignedAssigner(topk=topk, alpha=alpha, beta=beta)
        self.cls_weight = cls_weight
        self.bbox_weight = bbox_weight
        self.dfl_weight = dfl_weight
        self.world_size = world_size
        self.cls_loss = cls_loss
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha
        self.strides = tuple(strides)

    def forward(self, cls_logits: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor],
                bbox_dists: Sequence[torch.Tensor], gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                gt_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Assign targets and compute the three loss parts.

        Args:
            cls_logits: per level (B, N, H, W) logits for each image's N texts.
            bbox_preds: per level (B, 4, H, W) distances l, t, r, b in stride units.
            bbox_dists: per level (B, 4 * reg_max, H, W) DFL logits, channel = side * reg_max + bin.
            gt_boxes: (B, M, 4) xyxy GT boxes in input pixels.
            gt_labels: (B, M) long indices into the image's N texts.
            gt_mask: (B, M) bool, False for padding rows.

        Returns:
            dict with `loss` (sum of parts), `loss_cls`, `loss_bbox`, `loss_dfl`,
            `num_pos` (long scalar) and `assigned_score_sum` (detached, before clamping).
        """
        dtype = torch.promote_types(cls_logits[0].dtype, torch.float32)
        feature_shapes = [tuple(level.shape[-2:]) for level in cls_logits]
        points, stride_tensor = make_priors(feature_shapes, self.strides[:len(cls_logits)],
                                            cls_logits[0].device, dtype)
        flat_logits = torch.cat([level.flatten(2) for level in cls_logits], dim=2).transpose(1, 2).to(dtype)
        flat_dist = self._flatten_dists(bbox_dists).to(dtype)
        flat_distances = torch.cat([level.flatten(2) for level in bbox_preds], dim=2).transpose(1, 2).to(dtype)
        pred_boxes = decode_boxes(points, flat_distances * stride_tensor)

        assignment = self.assigner(flat_logits.detach().sigmoid(), pred_boxes.detach(), points,
                                   gt_labels, gt_boxes.to(dtype), gt_mask)
        return self.losses_from_assignment(flat_logits, pred_boxes, flat_dist, points, stride_tensor,
                                           assignment)

    def losses_from_assignment(self, flat_logits: torch.Tensor, pred_boxes: torch.Tensor,
                               flat_dist: torch.Tensor, points: torch.Tensor, stride_tensor: torch.Tensor,
                               assignment: AssignResult) -> dict[str, torch.Tensor]:
        """Loss parts for a fixed assignment (differentiable in the predictions).

        Args:
            flat_logits: (B, A, N) class logits.
            pred_boxes: (B, A, 4) predicted xyxy boxes in pixels.
            flat_dist: (B, A, 4, reg_max) DFL logits.
            points: (A, 2) prior centres in pixels.
            stride_tensor: (A, 1) prior strides.
            assignment: the assigner's output for these predictions.

        Returns:
            The same dict as `forward`.
        """
        scores, fg_mask = assignment.scores, assignment.fg_mask
        score_sum = scores.sum()
        normaliser = score_sum.clamp(min=1)

        if self.cls_loss == "bce":
            cls_elementwise = F.binary_cross_entropy_with_logits(flat_logits, scores, reduction="none")
        else:
            cls_elementwise = soft_sigmoid_focal_loss(flat_logits, scores, self.focal_gamma, self.focal_alpha)
        loss_cls = self.cls_weight * cls_elementwise.sum() / normaliser

        # Boolean indexing keeps an empty selection in the graph, so images
        # without positives give exact zeros without a host-side branch.
        strides = stride_tensor.expand(fg_mask.shape[0], -1, -1)[fg_mask]
        pos_points = points.expand(fg_mask.shape[0], -1, -1)[fg_mask] / strides
        pred_pos = pred_boxes[fg_mask] / strides
        target_pos = assignment.boxes[fg_mask] / strides
        weight = scores.sum(dim=-1)[fg_mask]

        ciou = bbox_ciou(pred_pos, target_pos, eps=1e-7)
        loss_bbox = self.bbox_weight * ((1.0 - ciou) * weight).sum() / normaliser

        target_dist = encode_distances(pos_points, target_pos, self.reg_max - 1, eps=0.01)
        dfl = distribution_focal_loss(flat_dist[fg_mask], target_dist)
        loss_dfl = self.dfl_weight * (dfl * weight[:, None]).sum() / normaliser

        scale = fg_mask.shape[0] * self.world_size
        loss_cls, loss_bbox, loss_dfl = loss_cls * scale, loss_bbox * scale, loss_dfl * scale
        return {
            "loss": loss_cls + loss_bbox + loss_dfl,
            "loss_cls": loss_cls,
            "loss_bbox": loss_bbox,
            "loss_dfl": loss_dfl,
            "num_pos": fg_mask.sum(),
            "assigned_score_sum": score_sum.detach(),
        }

    def _flatten_dists(self, bbox_dists: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-level (B, 4 * reg_max, H, W) -> (B, A, 4, reg_max)."""
        batch = bbox_dists[0].shape[0]
        levels = [level.reshape(batch, 4, self.reg_max, -1) for level in bbox_dists]
        return torch.cat(levels, dim=-1).permute(0, 3, 1, 2)
