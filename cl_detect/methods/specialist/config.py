"""Configuration of the `specialist` baseline (closed-set head per task)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SpecialistConfig:
    """A closed-set detector per task: the shared backbone and neck, a plain per-class head.

    Args:
        match_threshold: cosine similarity at which a prompt's text embedding is
            recognised as one of a learned vocabulary's names (the same text
            through the same encoder gives 1.0; 0.999 leaves room for float noise).
        absent_logit: logit given to a prompt no learned vocabulary contains
            (sigmoid(-30) ~ 1e-13: never a detection, no gradient).
    """

    match_threshold: float = 0.999
    absent_logit: float = -30.0

    def __post_init__(self):
        if not 0 < self.match_threshold <= 1:
            raise ValueError(f"match_threshold must be in (0, 1], got {self.match_threshold}")
        if self.absent_logit > -5:
            raise ValueError(f"absent_logit must be <= -5 so unknown prompts never fire, got {self.absent_logit}")
