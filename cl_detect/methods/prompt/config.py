"""Configuration of the `prompt` method."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PromptConfig:
    """Prompt tuning: the task's class embeddings are parameters; the detector is frozen.

    Args:
        use_mlp_adapter: pass the learned embeddings through a residual MLP
            (D -> 2D, ReLU, -> D, plus the input) and L2-normalise, as the official
            `use_mlp_adapter`; the adapter trains too. Its last layer starts at zero,
            so training starts from the encoder's embeddings exactly.
        reuse_learned: a class that was learned in an earlier task starts from its
            learned embedding instead of the text encoder's.
    """

    use_mlp_adapter: bool = False
    reuse_learned: bool = True

    def __post_init__(self):
        for name in ("use_mlp_adapter", "reuse_learned"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
