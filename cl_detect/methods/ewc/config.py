"""Configuration of the `ewc` method."""
from __future__ import annotations

from dataclasses import dataclass

from cl_detect._config_keys import check_image_size


@dataclass
class EwcConfig:
    """Elastic Weight Consolidation (online variant: one anchor, accumulated Fisher).

    Args:
        strength: lambda in loss_ewc = lambda / 2 * sum F (theta - theta*)^2.
        fisher_batches: at most this many batches of the finished task's training
            data are used to estimate the diagonal Fisher.
        batch_size: images per Fisher batch (1 = per-image squared gradients, the
            closest to the true empirical Fisher; larger is faster but averages
            gradients inside a batch before squaring).
        image_size: letterbox size of the Fisher images; None (default): the task's training
            size (`TaskContext.image_size`).
        decay: online-EWC decay of earlier tasks' Fisher: F = decay * F_old + F_task
            (1 = plain sum over tasks).
        seed: picks which training images are used for the Fisher.
    """

    strength: float = 1000.0
    fisher_batches: int = 16
    batch_size: int = 1
    image_size: int | None = None
    decay: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        if self.fisher_batches < 1 or self.batch_size < 1:
            raise ValueError(f"fisher_batches and batch_size must be >= 1, got "
                             f"{self.fisher_batches} and {self.batch_size}")
        if self.image_size is not None:
            check_image_size(self.image_size)
        if not 0 <= self.decay <= 1:
            raise ValueError(f"decay must be in [0, 1], got {self.decay}")
