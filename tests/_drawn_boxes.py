"""Tiny synthetic images with solid coloured rectangles, and checks that boxes still match them.

Each class has its own saturated colour on a dark background, so after any
geometric transform the pixels of a box's colour can be located and compared
with the transformed box.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary

BACKGROUND = 40
CLASS_COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0)]


def draw_image(height: int, width: int, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """BGR image with each box filled in its class colour (box xyxy, x2/y2 exclusive)."""
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
        image[y1:y2, x1:x2] = CLASS_COLOURS[label]
    return image


def colour_mask(image_bgr: np.ndarray, label: int) -> np.ndarray:
    """Pixels closer to the class colour than to anything else (half-blended edges included)."""
    distance = np.abs(image_bgr.astype(np.int32) - np.array(CLASS_COLOURS[label])).max(-1)
    return distance < 128


def pixel_extent(mask: np.ndarray, window: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """xyxy (x2/y2 exclusive) bounding box of the mask pixels inside `window`, None if there are none."""
    x1, y1, x2, y2 = window
    ys, xs = np.nonzero(mask[y1:y2, x1:x2])
    if len(xs) == 0:
        return None
    return x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1


def assert_boxes_match_pixels(image_bgr: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                              tolerance: float = 2.0, margin: int = 4) -> None:
    """Every box must coincide (within `tolerance` px per edge) with its colour's pixels near it."""
    height, width = image_bgr.shape[:2]
    assert len(boxes) > 0, "test setup: no boxes survived"
    for box, label in zip(boxes, labels):
        window = (max(int(box[0]) - margin, 0), max(int(box[1]) - margin, 0),
                  min(int(np.ceil(box[2])) + margin, width), min(int(np.ceil(box[3])) + margin, height))
        extent = pixel_extent(colour_mask(image_bgr, int(label)), window)
        assert extent is not None, f"no pixels of class {label} near box {box}"
        assert np.abs(np.array(extent, np.float64) - box).max() <= tolerance, (box, extent)


def write_dataset(root: Path, num_images: int = 8, seed: int = 0, num_classes: int = 3,
                  sizes: tuple[tuple[int, int], ...] = ((96, 128), (128, 96), (80, 80))) -> DetectionDataset:
    """Write `num_images` PNGs with 1-3 well separated rectangles each; return the dataset."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_images):
        height, width = sizes[i % len(sizes)]
        count = int(rng.integers(1, 4))
        # One rectangle per vertical band, 12 px clear of the borders and of each other.
        band = (width - 12) // count
        boxes = []
        for b in range(count):
            x1 = 12 + b * band + int(rng.integers(0, 4))
            x2 = x1 + int(rng.integers(10, band - 12 + 1))
            y1 = int(rng.integers(12, height // 2))
            y2 = int(rng.integers(y1 + 10, height - 12 + 1))
            boxes.append([x1, y1, x2, y2])
        boxes = np.array(boxes, np.float32)
        labels = rng.integers(0, num_classes, count)
        path = root / f"img_{i}.png"
        cv2.imwrite(str(path), draw_image(height, width, boxes, labels))
        records.append(DetectionRecord(str(path), width, height, boxes, labels, image_id=i + 1))
    names = ("red thing", "green thing", "blue thing", "yellow thing", "pink thing", "cyan thing")[:num_classes]
    return DetectionDataset(records, Vocabulary(names), source=str(root))
