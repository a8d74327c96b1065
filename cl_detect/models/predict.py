"""Inference: official preprocessing, box decoding and NMS.

Post-processing follows the official test config: sigmoid scores, multi-label
candidates with score > 0.001, the top 30000 kept, boxes mapped back through the
letterbox, class-aware NMS at IoU 0.7, 300 detections per image, boxes clamped to
the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from cl_detect._config_keys import check_image_size, is_integer
from cl_detect.data.preprocess import LetterboxInfo, images_to_device, letterbox, load_image_bgr, to_uint8_tensor
from cl_detect.engine._box_ops import decode_boxes, make_priors
from cl_detect.models.fuse import compile_for_inference, fused_copy
from cl_detect.models.precision import bf16_autocast


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


def select_candidates(scores: torch.Tensor, score_thr: float, nms_pre: int):
    """Each image's (anchor, class) pairs scoring above `score_thr`, best first, at most `nms_pre`.

    Args:
        scores: (B, A * N) sigmoid scores, anchor-major.

    Returns:
        (image, flat index, score) of every candidate, image by image, and the count per image.
        One host sync for the batch: where some image has more than `nms_pre` candidates, one
        top-k per image; otherwise the candidates are gathered and sorted for the whole batch
        (cheaper when few pass the threshold, as with a trained detector).
    """
    passed = scores > score_thr
    counts = passed.sum(1, dtype=torch.int32).tolist()  # (an int32 sum of bools is twice as fast)
    if max(counts, default=0) > nms_pre:
        top_scores, top_index = scores.topk(nms_pre, dim=1)
        keep = torch.arange(nms_pre, device=scores.device) < top_scores.new_tensor(counts)[:, None]
        image = torch.arange(len(scores), device=scores.device)[:, None].expand_as(keep)
        return image[keep], top_index[keep], top_scores[keep], [min(c, nms_pre) for c in counts]
    image, index = passed.nonzero(as_tuple=True)  # image-major
    candidate_scores = scores[image, index]
    order = candidate_scores.argsort(descending=True, stable=True)
    order = order[image[order].argsort(stable=True)]  # by image, best first within each
    return image[order], index[order], candidate_scores[order], counts


def postprocess(cls_logits, bbox_preds, strides, infos: list[LetterboxInfo], score_thr: float = 0.001,
                nms_pre: int = 30000, iou_thr: float = 0.7, max_per_img: int = 300,
                batched: bool | None = None) -> list[Detections]:
    """Official multi-label decoding + class-aware NMS for a batch of head outputs.

    Candidates are selected and un-letterboxed (`select_candidates`) for the whole batch at
    once, with one host sync, when `batched`; image by image otherwise. None picks batched on
    a GPU and image by image on a CPU, where the smaller working set is faster
    (benchmarks/postprocess_speed.py). NMS runs image by image. Both give the detections of
    the per-image official procedure; exactly equal scores may come in another order.
    """
    logits, boxes = flatten_outputs(cls_logits, bbox_preds, strides)
    settings = (score_thr, nms_pre, iou_thr, max_per_img)
    if batched is None:
        batched = logits.device.type != "cpu"
    if batched:
        return _detections(logits, boxes, infos, *settings)
    return [det for i, info in enumerate(infos)
            for det in _detections(logits[i:i + 1], boxes[i:i + 1], [info], *settings)]


def _detections(logits, boxes, infos, score_thr, nms_pre, iou_thr, max_per_img) -> list[Detections]:
    # imported here: torchvision imports torch._dynamo (about 2 s), which every `cl-detect` command paid at start
    from torchvision.ops import batched_nms
    num_classes = logits.shape[-1]
    image, index, scores, counts = select_candidates(logits.sigmoid().flatten(1), score_thr, nms_pre)
    offset = boxes.new_tensor([[info.pad_left, info.pad_top, info.pad_left, info.pad_top] for info in infos])
    scale = boxes.new_tensor([[info.scale[0], info.scale[1], info.scale[0], info.scale[1]] for info in infos])
    # LetterboxInfo.unmap_boxes' arithmetic, each candidate by its own image's letterbox
    candidate_boxes = (boxes[image, index // num_classes] - offset[image]) / scale[image]
    results = []
    for image_boxes, image_scores, image_labels, info in zip(
            candidate_boxes.split(counts), scores.split(counts), (index % num_classes).split(counts), infos):
        kept = batched_nms(image_boxes, image_scores, image_labels, iou_thr)[:max_per_img]
        height, width = info.original_hw
        final = image_boxes[kept]
        final[:, 0::2] = final[:, 0::2].clamp(0, width)
        final[:, 1::2] = final[:, 1::2].clamp(0, height)
        results.append(Detections(final, image_scores[kept], image_labels[kept]))
    return results


def _as_bgr(image) -> np.ndarray:
    """A file path or a uint8 array as an (H, W, 3) uint8 BGR array.

    Arrays are taken as OpenCV reads them: (H, W, 3) BGR, (H, W) or (H, W, 1) grayscale,
    or (H, W, 4) BGRA; gray is repeated and alpha dropped, as reading such a file does.
    Other dtypes are refused: the network scales 0-255 to 0-1 itself, so a float array
    would be fed unscaled.
    """
    if isinstance(image, (str, Path)):
        return load_image_bgr(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"images must be file paths or uint8 BGR arrays, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (0-255) BGR, got {image.dtype} with shape {image.shape}; "
                         "convert floats in [0, 1] with (image * 255).clip(0, 255).astype(np.uint8), "
                         "16-bit images with (image // 257).astype(np.uint8)")
    if image.size == 0:
        raise ValueError(f"image array of shape {image.shape} holds no pixels")
    channels = 1 if image.ndim == 2 else image.shape[2] if image.ndim == 3 else None
    if channels == 3:
        return image
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"image arrays must be (H, W, 3) BGR, (H, W) grayscale or (H, W, 4) BGRA, "
                     f"got shape {image.shape}")


def _check_settings(batch_size, score_thr, nms_pre, iou_thr, max_per_img) -> None:
    """Refuse settings that would fail deep inside (batch_size 0, a negative nms_pre) or drop detections
    silently (max_per_img=-1 kept all but the last, as a slice does)."""
    problems = [f"{name}={value!r} (want {want})" for name, value, ok, want in (
        ("batch_size", batch_size, is_integer(batch_size) and batch_size >= 1, "an integer >= 1"),
        ("nms_pre", nms_pre, is_integer(nms_pre) and nms_pre >= 1, "an integer >= 1"),
        ("max_per_img", max_per_img, is_integer(max_per_img) and max_per_img >= 0, "an integer >= 0"),
        ("score_thr", score_thr, 0 <= score_thr <= 1, "a score in [0, 1]"),
        ("iou_thr", iou_thr, 0 <= iou_thr <= 1, "an IoU in [0, 1]")) if not ok]
    if problems:
        raise ValueError(f"predict settings out of range: {', '.join(problems)}; the official ones are "
                         "batch_size=16, score_thr=0.001, nms_pre=30000, iou_thr=0.7, max_per_img=300")


@torch.no_grad()
def predict(detector, images, text_embeddings: torch.Tensor, image_size: int = 640, batch_size: int = 16,
            score_thr: float = 0.001, nms_pre: int = 30000, iou_thr: float = 0.7, max_per_img: int = 300,
            bf16: bool = True, fuse: bool = True, compile: bool = False) -> list[Detections]:
    """Detect the objects named by `text_embeddings` in raw images.

    Args:
        detector: a YOLOWorldDetector (put in eval mode here).
        images: a path, a uint8 BGR (or gray, BGRA) array, or a list of them.
        text_embeddings: (N, D) or (1, N, D) embeddings of the prompts for all images, or
            (B, N, D) with B = the number of images: each image's own prompts; a tensor or a
            numpy array, cast to the detector's dtype.
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
    check_image_size(image_size)
    _check_settings(batch_size, score_thr, nms_pre, iou_thr, max_per_img)
    if not isinstance(images, (list, tuple)):
        images = [images]
    detector = fused_copy(detector) if fuse else detector.eval()
    device, dtype = next(detector.parameters()).device, next(detector.parameters()).dtype
    runner = compile_for_inference(detector, min(batch_size, len(images))) if compile else detector
    text_embeddings = torch.as_tensor(text_embeddings)  # also an array, e.g. the official embedding_path .npy
    text = text_embeddings if text_embeddings.dim() == 3 else text_embeddings[None]
    if len(text) not in (1, len(images)):
        raise ValueError(f"text embeddings are {tuple(text_embeddings.shape)} for {len(images)} images: give (N, D) "
                         f"or (1, N, D) prompts for all images, or (B, N, D) with B = {len(images)}, one set per image")
    # in the detector's dtype: float64 embeddings (from numpy) failed deep in the neck ("mat1 and mat2 must have
    # the same dtype"), and so did the float32 images for a detector converted with .double() or .bfloat16()
    text = text.to(device, dtype)
    autocast = bf16_autocast(device, cuda=bf16)
    results: list[Detections] = []
    for start in range(0, len(images), batch_size):
        chunk = [letterbox(_as_bgr(image), image_size) for image in images[start:start + batch_size]]
        batch = images_to_device(torch.stack([to_uint8_tensor(padded) for padded, _ in chunk]), device).to(dtype)
        with autocast:
            out = runner(batch, text if len(text) == 1 else text[start:start + batch_size])
        results += postprocess(out.cls_logits, out.bbox_preds, detector.strides, [info for _, info in chunk],
                               score_thr, nms_pre, iou_thr, max_per_img)
    return results
