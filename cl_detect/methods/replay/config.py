"""Configuration of the `replay` method."""
from __future__ import annotations

from dataclasses import dataclass

from cl_detect.data.readers import FORMATS
from cl_detect.methods.replay.buffer import POLICIES


@dataclass
class ReplayConfig:
    """Replay of earlier tasks' images, mixed into every later task's batches.

    Args:
        capacity: images the buffer keeps (references and annotations, not pixels).
        policy: "reservoir" (uniform over every image seen) or "class_balanced"
            (trim the most frequent class first).
        ratio: share of each epoch's draws taken from the buffer (the task keeps
            the rest, and every task image is still drawn once per epoch).
        seed: seeds the buffer policy.
        pretraining_data: optional annotation file or folder of pretraining
            images, offered to the buffer when the model is built (before task 0).
        pretraining_format: its format (one of the reader formats); None = guess.
        pretraining_image_root: folder its image paths are relative to (None = the reader's guess).
    """

    capacity: int = 500
    policy: str = "reservoir"
    ratio: float = 0.25
    seed: int = 0
    pretraining_data: str | None = None
    pretraining_format: str | None = None
    pretraining_image_root: str | None = None

    def __post_init__(self):
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1 image, got {self.capacity}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0 < self.ratio < 1:
            raise ValueError(f"ratio is a share of the draws and must be in (0, 1), got {self.ratio}")
        if self.pretraining_format is not None and self.pretraining_format not in FORMATS:
            raise ValueError(f"pretraining_format must be one of {FORMATS}, got {self.pretraining_format!r}")
        if (self.pretraining_format or self.pretraining_image_root) and self.pretraining_data is None:
            raise ValueError("pretraining_format / pretraining_image_root are set but pretraining_data is not")
