"""Configuration of the `reparam` method."""
from __future__ import annotations

from dataclasses import dataclass

PARTS = ("backbone", "neck", "head")


@dataclass
class ReparamConfig:
    """Re-parameterised fine-tuning: class embeddings folded into convolutions, then trained.

    Args:
        fold_neck: also fold the neck's text projections (`guide_fc`) into per-head
            class convs (official "rep-vlpan"); False keeps the text-guided neck and
            folds only the head.
        parts: what trains after folding, any of "backbone", "neck", "head"
            (the folded class convs belong to the head, folded guide convs to the neck).
    """

    fold_neck: bool = False
    parts: tuple[str, ...] = PARTS

    def __post_init__(self):
        if isinstance(self.parts, str):
            raise ValueError(f"parts must be a list, got the string {self.parts!r}")
        self.parts = tuple(self.parts)
        if not self.parts or set(self.parts) - set(PARTS):
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {self.parts}")
        if not isinstance(self.fold_neck, bool):
            raise ValueError(f"fold_neck must be true or false, got {self.fold_neck!r}")
