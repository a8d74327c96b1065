"""Official YOLO-World test-time preprocessing: keep-ratio resize + letterbox.

Load BGR, resize so the longer side equals `size` (INTER_AREA when shrinking,
INTER_LINEAR when enlarging: small images ARE upscaled; each side int(side * ratio),
truncated as mmyolo's YOLOv5KeepRatioResize does), pad with 114 (top = pad_h // 2,
left = pad_w // 2), convert to RGB and divide by 255.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

PAD_VALUE = 114

# OpenCV's thread pool and fork() do not mix: a DataLoader worker forked while a pool
# thread holds its lock deadlocks on its first cv2 call. Parallelism comes from workers.
cv2.setNumThreads(0)


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was mapped into the network input.

    Args:
        scale: (scale_w, scale_h) factors applied to the original image.
        pad_top, pad_left: padding added above and to the left, in pixels.
        original_hw: (height, width) of the original image.
    """

    scale: tuple[float, float]
    pad_top: int
    pad_left: int
    original_hw: tuple[int, int]

    def unmap_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Map xyxy boxes from network-input pixels back to original pixels (no clamping)."""
        offset = boxes.new_tensor([self.pad_left, self.pad_top, self.pad_left, self.pad_top])
        scale = boxes.new_tensor([self.scale[0], self.scale[1], self.scale[0], self.scale[1]])
        return (boxes - offset) / scale


def load_image_bgr(path: str | Path) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 BGR array; a clear error if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}: missing, unreadable or not an image")
    return image


def keep_ratio_resize(image: np.ndarray, size: int, interpolation: int | None = None
                      ) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize so the longer side is `size`; returns the image and (scale_w, scale_h).

    Args:
        image: (H, W, C) or (H, W) array.
        size: the longer side after resizing.
        interpolation: an OpenCV flag; None is the official test pipeline's choice, INTER_AREA
            when shrinking and INTER_LINEAR when enlarging (the official mosaic always uses
            INTER_LINEAR, mmcv.imresize's default).
    """
    height, width = image.shape[:2]
    ratio = size / max(height, width)
    # mmyolo (YOLOv5KeepRatioResize, Mosaic) truncates: a 1000 x 667 image becomes 640 x 426, and a
    # long side that float rounding puts at 639.99 becomes 639 (the letterbox pads it). At least 1
    # pixel, or a 1 x 1500 strip would get 0 rows and crash cv2.resize (where mmcv fails, so nothing
    # the official pipeline can read changes).
    new_w, new_h = max(1, int(width * ratio)), max(1, int(height * ratio))
    if (new_w, new_h) != (width, height):
        if interpolation is None:
            interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return image, (new_w / width, new_h / height)


def letterbox(image_bgr: np.ndarray, size: int = 640) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio and pad to `size` x `size` with value 114 (BGR kept)."""
    original_hw = image_bgr.shape[:2]
    resized, scale = keep_ratio_resize(image_bgr, size)
    pad_h, pad_w = size - resized.shape[0], size - resized.shape[1]
    top, left = pad_h // 2, pad_w // 2
    padded = cv2.copyMakeBorder(resized, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                                value=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    return padded, LetterboxInfo(scale, top, left, original_hw)


def to_uint8_tensor(image_bgr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 BGR -> (3, H, W) uint8 RGB.

    Loaders yield this: a quarter of float32's bytes through worker queues, pinned
    memory and the host-to-device copy; `images_to_device` converts after the copy.
    """
    return torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1)))


def to_tensor(image_bgr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 BGR -> (3, H, W) float32 RGB in [0, 1]."""
    return to_uint8_tensor(image_bgr).float().div_(255.0)


def images_to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A (B, 3, H, W) batch on `device` as float32 in [0, 1]; a uint8 batch is converted there.

    The values equal `to_tensor`'s exactly (the same float32 division), wherever it runs.
    """
    images = images.to(device, non_blocking=True)
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images
