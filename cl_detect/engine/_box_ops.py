"""Box geometry shared by the assigner, the losses, post-processing and metrics.

Priors, distance decoding/encoding and Complete-IoU, written from the CIoU
paper (Zheng et al., "Enhancing Geometric Factors in Model Learning and
Inference for Object Detection and Instance Segmentation", 2021) and the
conventions of ../shared/specs/yolo_world_v2.md (sections 1, 4 and 7).
Boxes are xyxy everywhere.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_FOUR_OVER_PI_SQUARED = 4.0 / math.pi**2


def make_priors(feature_shapes: Sequence[tuple[int, int]], strides: Sequence[int],
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior points of all levels, row-major within a level, levels concatenated.

    Args:
        feature_shapes: (H, W) of each level's feature map.
        strides: stride in input pixels of each level (8, 16, 32 for YOLO-World).
        device: device of the returned tensors.
        dtype: floating dtype of the returned tensors.

    Returns:
        points: (A, 2) prior centres ((x + 0.5) * s, (y + 0.5) * s) in pixels.
        stride_tensor: (A, 1) stride of each prior.
    """
    points, stride_list = [], []
    for (height, width), stride in zip(feature_shapes, strides, strict=True):
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2))
        stride_list.append(torch.full((height * width, 1), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_list)


def decode_boxes(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Turn (left, top, right, bottom) distances from points into xyxy boxes.

    Args:
        points: (..., 2) prior centres, broadcastable against `distances`.
        distances: (..., 4) distances l, t, r, b in the same unit as `points`
            (pixels: multiply the head's stride-unit output by the stride first).

    Returns:
        (..., 4) boxes x1, y1, x2, y2.
    """
    top_left = points - distances[..., :2]
    bottom_right = points + distances[..., 2:]
    return torch.cat([top_left, bottom_right], dim=-1)


def encode_distances(points: torch.Tensor, boxes: torch.Tensor, max_distance: float,
                     eps: float = 0.01) -> torch.Tensor:
    """Inverse of `decode_boxes`, clamped to the range the DFL bins can express.

    Args:
        points: (..., 2) prior centres.
        boxes: (..., 4) xyxy boxes, same unit as `points`.
        max_distance: largest bin index (reg_max - 1).
        eps: margin below `max_distance` so the right bin stays inside the range.

    Returns:
        (..., 4) distances l, t, r, b clamped to [0, max_distance - eps].
    """
    left_top = points - boxes[..., :2]
    right_bottom = boxes[..., 2:] - points
    return torch.cat([left_top, right_bottom], dim=-1).clamp(0, max_distance - eps)


def _ciou_terms(box1: torch.Tensor, box2: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IoU, normalised centre distance rho^2/c^2 and aspect-ratio term v of CIoU.

    Kept apart from `bbox_ciou` so tests can check these gradients with a
    constant trade-off alpha (the loss treats alpha as a constant).
    """
    b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)
    inter_w = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(min=0)
    inter_h = (torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)).clamp(min=0)
    overlap = inter_w * inter_h
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1
    iou = overlap / (w1 * h1 + w2 * h2 - overlap + eps)

    enclose_w = (torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)).clamp(min=0)
    enclose_h = (torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)).clamp(min=0)
    enclose_diag2 = enclose_w**2 + enclose_h**2 + eps
    # Differences of coordinate sums are twice the centre offsets, hence / 4.
    centre_dist2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    # eps on the heights keeps atan finite for degenerate (zero-height) boxes.
    aspect = _FOUR_OVER_PI_SQUARED * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    return iou, centre_dist2 / enclose_diag2, aspect


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired xyxy boxes (broadcasting), clamped to [-1, 1].

    CIoU = IoU - rho^2 / c^2 - alpha * v, with alpha = v / (v - IoU + 1 + eps)
    computed without gradient, as in the CIoU paper and the official loss.

    Args:
        box1: (..., 4) xyxy boxes.
        box2: (..., 4) xyxy boxes, broadcastable against `box1`.
        eps: guard added to the union, the enclosing diagonal and the heights.

    Returns:
        (...) CIoU values.
    """
    iou, centre_term, aspect = _ciou_terms(box1, box2, eps)
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + eps))
    return (iou - centre_term - alpha * aspect).clamp(min=-1.0, max=1.0)
