"""Four-image mosaic on a 2S x 2S canvas (the YOLOv5/YOLOv8 layout).

Each image is resized keeping its aspect ratio so its longer side is S
(bilinear, sides truncated, as mmyolo's Mosaic resizes), then
placed in one quadrant around a random centre (xc, yc) drawn uniformly from
[0.5 S, 1.5 S]: the top-left image ends at the centre, the top-right starts at
xc and ends at yc, and so on; whatever falls outside the canvas is cut off.
Empty canvas is filled with 114. Boxes are scaled by the float ratio S / longer side
(as mmyolo's Mosaic does, not by the truncated size), shifted with their image and clipped
to the part of it that is visible; fully cut-off boxes are dropped.

Grounding samples each carry their own phrases; the mosaic's label space is the
union of the four phrase lists (identical strings merged, first-seen order).
"""
from __future__ import annotations

import cv2
import numpy as np

from cl_detect.data.augment import Sample, map_boxes
from cl_detect.data.preprocess import PAD_VALUE, keep_ratio_resize


def _clip_to_region(boxes: np.ndarray, region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to `region`; returns the clipped boxes and a mask of non-empty ones."""
    x1, y1, x2, y2 = region
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(x1, x2)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(y1, y2)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, keep


def _merge_texts(samples: list[Sample]) -> tuple[tuple[str, ...] | None, list[np.ndarray]]:
    """Union of grounding phrase lists and, per sample, its labels remapped into the union."""
    grounding = [s.texts is not None for s in samples]
    if not any(grounding):
        return None, [s.labels for s in samples]
    if not all(grounding):
        raise ValueError("a mosaic cannot mix grounding samples (own phrases) with vocabulary-labelled ones; "
                         "keep grounding and detection records in separate datasets and mix them with MixedDataset")
    union: dict[str, int] = {}
    remapped = []
    for sample in samples:
        lookup = np.array([union.setdefault(t, len(union)) for t in sample.texts], np.int64)
        remapped.append(lookup[sample.labels] if len(sample.labels) else sample.labels)
    return tuple(union), remapped


def mosaic4(samples: list[Sample], size: int, rng: np.random.Generator) -> Sample:
    """Combine four samples into one 2S x 2S mosaic.

    Args:
        samples: exactly four samples (any sizes); the first gives the image id.
        size: S, the training input size; the canvas is 2S square.
        rng: randomness source (draws the centre).

    Returns:
        The mosaic sample; boxes in canvas pixels.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic4 needs 4 samples, got {len(samples)}")
    canvas_size = 2 * size
    canvas = np.full((canvas_size, canvas_size, 3), PAD_VALUE, np.uint8)
    centre_x = int(rng.uniform(0.5 * size, 1.5 * size))
    centre_y = int(rng.uniform(0.5 * size, 1.5 * size))
    texts, labels_per_sample = _merge_texts(samples)

    boxes, labels, ignores = [], [], []
    for quadrant, (sample, sample_labels) in enumerate(zip(samples, labels_per_sample)):
        image, _ = keep_ratio_resize(sample.image, size, cv2.INTER_LINEAR)  # as the official Mosaic
        # mmyolo's Mosaic scales boxes by the float ratio, not by the truncated size / original size
        ratio = size / max(sample.image.shape[:2])
        scale = (ratio, ratio)
        height, width = image.shape[:2]
        left_side, top_side = quadrant in (0, 2), quadrant in (0, 1)
        # Placement of the whole resized image in canvas coordinates (may extend past the canvas).
        place_x = centre_x - width if left_side else centre_x
        place_y = centre_y - height if top_side else centre_y
        region = (max(place_x, 0), max(place_y, 0),
                  min(place_x + width, canvas_size), min(place_y + height, canvas_size))
        x1, y1, x2, y2 = region
        canvas[y1:y2, x1:x2] = image[y1 - place_y:y2 - place_y, x1 - place_x:x2 - place_x]

        shifted, keep = _clip_to_region(map_boxes(sample.boxes, scale, (place_x, place_y)), region)
        boxes.append(shifted[keep])
        labels.append(sample_labels[keep])
        shifted_ignore, keep_ignore = _clip_to_region(
            map_boxes(sample.ignore_boxes, scale, (place_x, place_y)), region)
        ignores.append(shifted_ignore[keep_ignore])

    return Sample(image=canvas, boxes=np.concatenate(boxes).astype(np.float32),
                  labels=np.concatenate(labels).astype(np.int64),
                  ignore_boxes=np.concatenate(ignores).astype(np.float32),
                  texts=texts, image_id=samples[0].image_id)
