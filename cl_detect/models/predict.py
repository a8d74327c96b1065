"""Inference: official preprocessing, box decoding and NMS.

Post-processing follows the official test config: sigmoid scores, multi-label
candidates with score > 0.001, the top 30000 kept, boxes mapped back through the
letterbox, class-aware NMS at IoU 0.7, 300 detections per image, boxes clamped to
the image.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

from cl_detect.data.preprocess import LetterboxInfo, images_to_device, letterbox, load_image_bgr, to_uint8_tensor
from cl_detect.engine._box_ops import decode_boxes, make_priors
from cl_detect.models.fuse import compile_for_inference, fused_copy


@dataclass
class Detections:
    """Detections of one image in original pixels.

    Args:
        boxes: (K, 4) xyxy.
        scores: (K,) sigmoid scores, descending.
        labels: (K,) indices into the texts the detector was given.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)


def flatten_outputs(cls_logits: list[torch.Tensor], bbox_preds: list[torch.Tensor], strides):
    """Per-level maps -> (B, A, N) logits and (B, A, 4) decoded xyxy boxes in input pixels."""
    shapes = [tuple(x.shape[-2:]) for x in cls_logits]
    points, stride = make_priors(shapes, strides, cls_logits[0].device, torch.float32)
    logits = torch.cat([x.flatten(2) for x in cls_logits], 2).transpose(1, 2).float()
    distances = torch.cat([x.flatten(2) for x in bbox_preds], 2).transpose(1, 2).float() * stride
    return logits, decode_boxes(points, distances)


def postprocess(cls_logits, bbox_preds, strides, infos: list[LetterboxInfo], score_thr: float = 0.001,
                nms_pre: int = 30000, iou_thr: float = 0.7, max_per_img: int = 300) -> list[Detections]:
    """Official multi-label decoding + class-aware NMS for a batch of head outputs."""
    logits, boxes = flatten_outputs(cls_logits, bbox_preds, strides)
    scores_all = logits.sigmoid()
    results = []
    for scores, image_boxes, info in zip(scores_all, boxes, infos):
        keep = scores > score_thr
        candidate_scores = scores[keep]
        anchor_idx, labels = keep.nonzero(as_tuple=True)
        order = candidate_scores.argsort(descending=True)[:nms_pre]
        candidate_scores, anchor_idx, labels = candidate_scores[order], anchor_idx[order], labels[order]
        candidate_boxes = info.unmap_boxes(image_boxes[anchor_idx])
        kept = batched_nms(candidate_boxes, candidate_scores, labels, iou_thr)[:max_per_img]
        height, width = info.original_hw
        final = candidate_boxes[kept]
        final[:, 0::2] = final[:, 0::2].clamp(0, width)
        final[:, 1::2] = final[:, 1::2].clamp(0, height)
        results.append(Detections(final, candidate_scores[kept], labels[kept]))
    return results


def _as_bgr(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return load_image_bgr(image)
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        return image
    raise TypeError(f"images must be file paths or (H, W, 3) uint8 BGR arrays, got {type(image).__name__}")


@torch.no_grad()
def predict(detector, images, text_embeddings: torch.Tensor, image_size: int = 640, batch_size: int = 16,
            score_thr: float = 0.001, nms_pre: int = 30000, iou_thr: float = 0.7, max_per_img: int = 300,
            bf16: bool = True, fuse: bool = True, compile: bool = False) -> list[Detections]:
    """Detect the objects named by `text_embeddings` in raw images.

    Args:
        detector: a YOLOWorldDetector (put in eval mode here).
        images: a path, a BGR array, or a list of them.
        text_embeddings: (N, D) or (1, N, D) embeddings of the prompts (same for all images).
        image_size: letterbox size (official: 640).
        batch_size: images per forward pass.
        score_thr, nms_pre, iou_thr, max_per_img: official post-processing settings.
        bf16: use bf16 autocast on CUDA (ignored on CPU).
        fuse: run a copy with BatchNorm folded into the convolutions (same outputs to ~1e-5, faster).
        compile: run it through torch.compile (`compile_for_inference`): the first batch of
            a new shape compiles (tens of seconds), so it pays off for many images.

    Returns:
        One `Detections` per image, boxes in original pixels.
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    detector = fused_copy(detector) if fuse else detector.eval()
    device = next(detector.parameters()).device
    runner = compile_for_inference(detector, min(batch_size, len(images))) if compile else detector
    text = text_embeddings if text_embeddings.dim() == 3 else text_embeddings[None]
    text = text.to(device)
    use_autocast = bf16 and device.type == "cuda"
    results: list[Detections] = []
    for start in range(0, len(images), batch_size):
        chunk = [letterbox(_as_bgr(image), image_size) for image in images[start:start + batch_size]]
        batch = images_to_device(torch.stack([to_uint8_tensor(padded) for padded, _ in chunk]), device)
        context = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else nullcontext()
        with context:
            out = runner(batch, text)
        results += postprocess(out.cls_logits, out.bbox_preds, detector.strides, [info for _, info in chunk],
                               score_thr, nms_pre, iou_thr, max_per_img)
    return results
