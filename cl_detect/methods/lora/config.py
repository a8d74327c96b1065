"""Configuration of the `lora` method."""
from __future__ import annotations

import re
from dataclasses import dataclass

PARTS = ("backbone", "neck", "head", "text")
LAYER_TYPES = ("conv", "linear")


@dataclass
class LoraMethodConfig:
    """LoRA adapters (through peft) on chosen layers; only the adapters train.

    Args:
        parts: where adapters go: any of "backbone", "neck", "head" (the detector)
            and "text" (the text tower). Default: neck + head.
        layer_types: "conv" (every nn.Conv2d, 1x1 and 3x3) and/or "linear"
            (nn.Linear, e.g. the neck's `guide_fc` text projections).
        include: regular expressions; when given, a layer is targeted only if its
            model name (e.g. "detector.head.cls_preds.0.2") matches one (re.search).
        exclude: regular expressions; matching layers are never targeted.
        rank: LoRA rank r.
        alpha: LoRA alpha; the update is scaled by alpha / rank.
        dropout: dropout on the adapter input.
        per_task_adapters: a new adapter `task{index}` per task, added and activated in
            `before_task` (earlier ones are kept, frozen and inactive, unless merged);
            False: one adapter "default", created at setup and trained on every task.
        merge_after_task: at the end of each task fold the active adapter into the base
            weights (after writing it to the task folder) and drop it.
    """

    parts: tuple[str, ...] = ("neck", "head")
    layer_types: tuple[str, ...] = ("conv", "linear")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    per_task_adapters: bool = False
    merge_after_task: bool = False

    def __post_init__(self):
        # YAML gives lists; keep tuples so the config stays hashable and printable
        for name in ("parts", "layer_types", "include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list, got the string {value!r}")
            setattr(self, name, tuple(value))
            if not all(isinstance(item, str) for item in getattr(self, name)):
                raise ValueError(f"{name} must be a list of strings, got {list(value)}")
        if not self.parts or set(self.parts) - set(PARTS):
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {self.parts}")
        if not self.layer_types or set(self.layer_types) - set(LAYER_TYPES):
            raise ValueError(f"layer_types must be a non-empty subset of {LAYER_TYPES}, got {self.layer_types}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for pattern in self.include + self.exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"invalid layer pattern {pattern!r}: {err}") from None
