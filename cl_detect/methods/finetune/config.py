"""Configuration of the `finetune` method."""
from __future__ import annotations

from dataclasses import dataclass, field

from cl_detect._config_keys import is_number

PART_PREFIXES = {
    "all": ("detector.",),
    "backbone": ("detector.backbone.",),
    "neck": ("detector.neck.",),
    "head": ("detector.head.",),
    "neck+head": ("detector.neck.", "detector.head."),
}


@dataclass
class FinetuneConfig:
    """Full fine-tuning, or only chosen parts.

    Args:
        parts: "all", "backbone", "neck", "head", "neck+head".
        frozen_backbone_stages: stem + this many backbone stages stay frozen
            (0 = none; 1 = stem and stage1 ...; CSPDarknet only).
        lr_multipliers: LR multiplier per part ("backbone", "neck", "head", "text").
        train_text_encoder: also train the text tower (official: frozen).
        text_lr_factor: the text tower's LR multiplier when it trains (official 0.01).
        unfreeze_epochs: progressive unfreezing: part -> epoch from which it trains
            (e.g. {"backbone": 3}); parts not listed train from epoch 0.
    """

    parts: str = "all"
    frozen_backbone_stages: int = 0
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    train_text_encoder: bool = False
    text_lr_factor: float = 0.01
    unfreeze_epochs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.parts not in PART_PREFIXES:
            raise ValueError(f"parts must be one of {sorted(PART_PREFIXES)}, got {self.parts!r}")
        if not 0 <= self.frozen_backbone_stages <= 4:
            raise ValueError(f"frozen_backbone_stages must be 0..4, got {self.frozen_backbone_stages}")
        known = {"backbone", "neck", "head", "text"}
        for name, table in (("lr_multipliers", self.lr_multipliers), ("unfreeze_epochs", self.unfreeze_epochs)):
            if not isinstance(table, dict):  # a string would be read letter by letter
                raise ValueError(f"{name} must be a mapping part -> value (e.g. {{backbone: 0.1}}), got {table!r}")
            if set(table) - known:
                raise ValueError(f"{name} keys must be among {sorted(known)}, got {sorted(table)}")
        # quoted numbers ("0.1") failed as a bare TypeError here, or at the first epoch for unfreeze_epochs
        if not all(is_number(v) and v >= 0 for v in self.lr_multipliers.values()):
            raise ValueError(f"lr_multipliers must be numbers >= 0, without quotes, got {self.lr_multipliers}")
        if not all(type(v) is int and v >= 0 for v in self.unfreeze_epochs.values()):
            raise ValueError(f"unfreeze_epochs must be whole epochs >= 0, without quotes, got {self.unfreeze_epochs}")
        if "text" in self.unfreeze_epochs and not self.train_text_encoder:
            raise ValueError("unfreeze_epochs has 'text' but train_text_encoder is False")
        trained = {part for part in ("backbone", "neck", "head")
                   if any(f"detector.{part}.".startswith(prefix) for prefix in PART_PREFIXES[self.parts])}
        never = sorted(set(self.unfreeze_epochs) - trained - {"text"})
        if never:
            raise ValueError(f"unfreeze_epochs has {never}, which parts={self.parts!r} never trains; "
                             f"drop them or choose parts that include them")

