"""The YOLOv8 / YOLO-World training augmentation recipe, composed.

With mosaic (most epochs):
    mosaic of 4 images on a 2S canvas -> random affine into S x S (scale
    0.5-1.5, translate 0.1, no rotation/shear) -> HSV jitter -> horizontal flip.
Without mosaic (the last `close_mosaic` epochs, or `mosaic=False`):
    keep-ratio resize + letterbox to S (exactly `preprocess.letterbox`) ->
    random affine in place -> HSV jitter -> horizontal flip.
Both end in an S x S image, so the letterbox is the last geometric step in
either case. Building blocks live in `augment.py` and `mosaic.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cl_detect._config_keys import check_image_size
from cl_detect.data.augment import (Sample, clip_sample_boxes, hsv_jitter, horizontal_flip, letterbox_sample,
                                    random_affine)
from cl_detect.data.mosaic import mosaic4


@dataclass
class AugmentConfig:
    """Training augmentation settings (defaults: the official YOLO-World v2 recipe).

    Args:
        image_size: S, side of the square network input.
        mosaic: use 4-image mosaic (switch off for the last epochs; see `TrainDataset.set_mosaic`).
        mosaic_prob: probability of a mosaic per item while mosaic is on.
        scale_range: uniform range of the random affine scale.
        max_translate: max shift of the image centre as a fraction of S.
        max_rotate_degrees: +- rotation range (0 = off).
        max_shear_degrees: +- shear range (0 = off).
        min_box_size: boxes narrower or shorter than this many pixels after the affine are dropped.
        min_area_ratio: boxes keeping less than this fraction of their (scaled) area are dropped.
        max_aspect_ratio: boxes with max(w/h, h/w) at or above this are dropped.
        hsv_gains: max relative change of hue, saturation, value (0 disables one).
        flip_prob: probability of a horizontal flip.
    """

    image_size: int = 640
    mosaic: bool = True
    mosaic_prob: float = 1.0
    scale_range: tuple[float, float] = (0.5, 1.5)
    max_translate: float = 0.1
    max_rotate_degrees: float = 0.0
    max_shear_degrees: float = 0.0
    min_box_size: float = 2.0
    min_area_ratio: float = 0.1
    max_aspect_ratio: float = 100.0
    hsv_gains: tuple[float, float, float] = (0.015, 0.7, 0.4)
    flip_prob: float = 0.5

    def __post_init__(self):
        check_image_size(self.image_size)
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        for name in ("mosaic_prob", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.max_translate <= 0.5:
            raise ValueError(f"max_translate must be in [0, 0.5], got {self.max_translate}")

    @classmethod
    def no_augmentation(cls, image_size: int = 640) -> "AugmentConfig":
        """Geometry identical to evaluation: letterbox only (no mosaic, affine, colour or flip)."""
        return cls(image_size=image_size, mosaic=False, scale_range=(1.0, 1.0), max_translate=0.0,
                   hsv_gains=(0.0, 0.0, 0.0), flip_prob=0.0)


class TrainAugment:
    """Applies the recipe of `AugmentConfig` to one (or four, for a mosaic) samples.

    Usage: `n = augment.images_needed(mosaic_on, rng)`, load the item plus
    n - 1 partner images, then `augment(samples, rng)`.

    Args:
        config: the settings.
    """

    def __init__(self, config: AugmentConfig):
        self.config = config

    def _affine_is_identity(self) -> bool:
        # Skipped then, so the no-augmentation path keeps even tiny boxes, exactly like evaluation.
        config = self.config
        return (config.scale_range == (1.0, 1.0) and config.max_translate == 0.0
                and config.max_rotate_degrees == 0.0 and config.max_shear_degrees == 0.0)

    def images_needed(self, mosaic_enabled: bool, rng: np.random.Generator) -> int:
        """4 if this item becomes a mosaic, else 1 (draws from rng only when mosaic is on)."""
        if mosaic_enabled and self.config.mosaic and rng.random() < self.config.mosaic_prob:
            return 4
        return 1

    def __call__(self, samples: list[Sample], rng: np.random.Generator) -> Sample:
        """Augment; returns an S x S sample with boxes in its pixels.

        Args:
            samples: one sample, or four for a mosaic (the item first).
            rng: randomness source; the same state gives the same output.
        """
        config, size = self.config, self.config.image_size
        if len(samples) == 4:
            sample = mosaic4(samples, size, rng)
        elif len(samples) == 1:
            sample, _ = letterbox_sample(samples[0], size)
        else:
            raise ValueError(f"expected 1 or 4 samples, got {len(samples)}")
        if len(samples) == 4 or not self._affine_is_identity():
            sample = random_affine(
                sample, size, rng, scale_range=config.scale_range, max_translate=config.max_translate,
                max_rotate_degrees=config.max_rotate_degrees, max_shear_degrees=config.max_shear_degrees,
                min_box_size=config.min_box_size, min_area_ratio=config.min_area_ratio,
                max_aspect_ratio=config.max_aspect_ratio)
        else:  # as mmyolo's LetterResize (clip_object_border): a box spilling past the image is clipped to it
            sample = clip_sample_boxes(sample, size)
        if any(config.hsv_gains):
            sample = hsv_jitter(sample, config.hsv_gains, rng)
        if rng.random() < config.flip_prob:
            sample = horizontal_flip(sample)
        return sample
