"""Single-image training augmentations: letterbox, random affine, HSV jitter, flip.

Every function takes and returns a `Sample` (BGR uint8 image + boxes in that
image's pixels) and draws its randomness from a `numpy.random.Generator`, so a
fixed generator state gives a fixed result. Ignore (crowd) regions go through
the same geometry as the boxes.

Box filtering rule after a geometric transform (the YOLOv5/YOLOv8 rule): a box
is kept iff, after transforming its four corners, taking their bounding box and
clipping it to the output image,
  * its width and height both exceed `min_box_size` pixels,
  * its clipped area is more than `min_area_ratio` of its area before clipping
    (original area x scale^2), i.e. enough of the object is still visible,
  * max(w / h, h / w) is below `max_aspect_ratio` (drops slivers at the border),
  * it had a positive width and height before the transform (an inverted box,
    which only data the doctor was told to let through has, is dropped here
    as the mosaic drops it, instead of becoming the box spanned by its corners).
Ignore regions are kept whenever their clipped area is non-zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import math

import cv2
import numpy as np

from cl_detect.data.preprocess import PAD_VALUE, LetterboxInfo, letterbox

_EMPTY_BOXES = np.zeros((0, 4), np.float32)


@dataclass
class Sample:
    """One image on its way through the training transforms.

    Args:
        image: (H, W, 3) uint8 BGR.
        boxes: (K, 4) float32 xyxy pixels of `image`.
        labels: (K,) int64: indices into the dataset vocabulary, or into `texts`
            for grounding samples.
        ignore_boxes: (M, 4) float32 xyxy crowd / ignore regions.
        texts: grounding only: the per-sample label space (unique phrases).
        image_id: source image id (of the first image for a mosaic).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray = field(default_factory=lambda: _EMPTY_BOXES.copy())
    texts: tuple[str, ...] | None = None
    image_id: int = 0


def map_boxes(boxes: np.ndarray, scale: tuple[float, float], offset: tuple[float, float]) -> np.ndarray:
    """Apply an axis-aligned scale then offset to (K, 4) xyxy boxes."""
    factor = np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)
    shift = np.array([offset[0], offset[1], offset[0], offset[1]], np.float32)
    return (boxes * factor + shift).astype(np.float32)


def letterbox_sample(sample: Sample, size: int) -> tuple[Sample, LetterboxInfo]:
    """The evaluation letterbox (`preprocess.letterbox`) applied to a sample and its boxes."""
    image, info = letterbox(sample.image, size)
    offset = (info.pad_left, info.pad_top)
    return replace(sample, image=image, boxes=map_boxes(sample.boxes, info.scale, offset),
                   ignore_boxes=map_boxes(sample.ignore_boxes, info.scale, offset)), info


def clip_sample_boxes(sample: Sample, size: int) -> Sample:
    """Boxes and ignore regions clipped to the size x size image; those left empty are dropped."""
    def clipped(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = boxes.clip(0, size)
        return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])

    boxes, keep = clipped(sample.boxes)
    ignore, keep_ignore = clipped(sample.ignore_boxes)
    return replace(sample, boxes=boxes[keep], labels=sample.labels[keep], ignore_boxes=ignore[keep_ignore])


def _transform_boxes(boxes: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Map xyxy boxes through a 3x3 affine matrix: bounding box of the 4 corners, clipped."""
    if len(boxes) == 0:
        return _EMPTY_BOXES.copy()
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1),
                        np.stack([x1, y2], 1), np.stack([x2, y2], 1)], 1)  # (K, 4, 2)
    mapped = corners @ matrix[:2, :2].T + matrix[:2, 2]
    out = np.concatenate([mapped.min(1), mapped.max(1)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out.astype(np.float32)


def box_keep_mask(before: np.ndarray, after: np.ndarray, scale: float, min_box_size: float,
                  min_area_ratio: float, max_aspect_ratio: float) -> np.ndarray:
    """The documented filter rule (module docstring); returns a (K,) bool mask."""
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    area_ratio = w1 * h1 / (w0 * h0 * scale * scale + 1e-16)
    aspect = np.maximum(w1 / (h1 + 1e-16), h1 / (w1 + 1e-16))
    # an inverted box (x2 < x1 and y2 < y1) has a positive area ratio but must not become a valid box
    # after the corner mapping; the mosaic drops it too (only data the doctor let through has one)
    valid_before = (w0 > 0) & (h0 > 0)
    return (valid_before & (w1 > min_box_size) & (h1 > min_box_size) & (area_ratio > min_area_ratio)
            & (aspect < max_aspect_ratio))


def random_affine(sample: Sample, out_size: int, rng: np.random.Generator, *,
                  scale_range: tuple[float, float] = (0.5, 1.5), max_translate: float = 0.1,
                  max_rotate_degrees: float = 0.0, max_shear_degrees: float = 0.0,
                  min_box_size: float = 2.0, min_area_ratio: float = 0.1,
                  max_aspect_ratio: float = 100.0) -> Sample:
    """Random scale / translate (/ rotate / shear) about the image centre into an out_size square.

    The input centre goes to (0.5 +- max_translate) * out_size, so a 2S mosaic
    canvas mapped into S pixels is a random crop around its centre (the YOLOv5
    `border = -S/2` convention), and an S letterboxed image stays centred.

    Args:
        sample: input sample (any size).
        out_size: side of the square output.
        rng: randomness source.
        scale_range: uniform range of the isotropic scale factor.
        max_translate: max shift of the centre as a fraction of out_size.
        max_rotate_degrees, max_shear_degrees: uniform +- ranges (0 = off, the YOLO-World default).
        min_box_size, min_area_ratio, max_aspect_ratio: the box filter rule.

    Returns:
        The warped sample, border filled with 114, boxes filtered.
    """
    height, width = sample.image.shape[:2]
    scale = float(rng.uniform(*scale_range))
    angle = float(rng.uniform(-max_rotate_degrees, max_rotate_degrees))
    shear_x = math.tan(math.radians(rng.uniform(-max_shear_degrees, max_shear_degrees)))
    shear_y = math.tan(math.radians(rng.uniform(-max_shear_degrees, max_shear_degrees)))
    centre_x = rng.uniform(0.5 - max_translate, 0.5 + max_translate) * out_size
    centre_y = rng.uniform(0.5 - max_translate, 0.5 + max_translate) * out_size

    to_origin = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]], np.float64)
    rotate_scale = np.eye(3)
    rotate_scale[:2] = cv2.getRotationMatrix2D((0, 0), angle, scale)
    shear = np.array([[1, shear_x, 0], [shear_y, 1, 0], [0, 0, 1]], np.float64)
    to_output = np.array([[1, 0, centre_x], [0, 1, centre_y], [0, 0, 1]], np.float64)
    matrix = to_output @ shear @ rotate_scale @ to_origin

    image = cv2.warpAffine(sample.image, matrix[:2], (out_size, out_size), flags=cv2.INTER_LINEAR,
                           borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    boxes = _transform_boxes(sample.boxes, matrix, out_size, out_size)
    keep = box_keep_mask(sample.boxes, boxes, scale, min_box_size, min_area_ratio, max_aspect_ratio)
    ignore_before = sample.ignore_boxes
    ignore_before = ignore_before[(ignore_before[:, 2] > ignore_before[:, 0])
                                  & (ignore_before[:, 3] > ignore_before[:, 1])]
    ignore = _transform_boxes(ignore_before, matrix, out_size, out_size)
    ignore = ignore[(ignore[:, 2] > ignore[:, 0]) & (ignore[:, 3] > ignore[:, 1])]
    return replace(sample, image=image, boxes=boxes[keep], labels=sample.labels[keep], ignore_boxes=ignore)


def hsv_jitter(sample: Sample, gains: tuple[float, float, float], rng: np.random.Generator) -> Sample:
    """Multiply hue, saturation and value by random factors 1 +- gain (lookup tables, uint8).

    OpenCV stores 8-bit hue in [0, 180), so the hue table wraps modulo 180.
    """
    factors = rng.uniform(-1.0, 1.0, 3) * np.asarray(gains) + 1.0
    hue, sat, val = cv2.split(cv2.cvtColor(sample.image, cv2.COLOR_BGR2HSV))
    levels = np.arange(256, dtype=np.float64)
    lut_hue = ((levels * factors[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(levels * factors[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(levels * factors[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return replace(sample, image=cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))


def _flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def horizontal_flip(sample: Sample) -> Sample:
    """Mirror the image left-right; x1' = W - x2 and x2' = W - x1."""
    width = sample.image.shape[1]
    # cv2.flip is several times faster than copying a negative-stride numpy view.
    return replace(sample, image=cv2.flip(sample.image, 1),
                   boxes=_flip_boxes(sample.boxes, width),
                   ignore_boxes=_flip_boxes(sample.ignore_boxes, width))
