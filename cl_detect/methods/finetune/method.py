"""`finetune`: the baseline every method is compared against.

Trains the chosen parts of the detector (all / head / neck+head, optionally with
frozen backbone stages and progressive unfreezing); the text tower is frozen
unless asked for, then trained at a lower LR.
"""
from __future__ import annotations

from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.finetune.config import PART_PREFIXES, FinetuneConfig

_PART_OF_PREFIX = {"detector.backbone.": "backbone", "detector.neck.": "neck", "detector.head.": "head",
                   "text_encoder.": "text"}


def _part(name: str) -> str | None:
    return next((part for prefix, part in _PART_OF_PREFIX.items() if name.startswith(prefix)), None)


class FinetuneMethod(Method):
    is_trainer = True

    def __init__(self, config: FinetuneConfig):
        super().__init__(config)
        self.epoch = 0

    def _frozen_backbone(self, name: str) -> bool:
        stages = ["detector.backbone.stem."] + [f"detector.backbone.stage{i}." for i in range(1, 5)]
        return any(name.startswith(prefix) for prefix in stages[:self.config.frozen_backbone_stages + 1]) \
            if self.config.frozen_backbone_stages else False

    def _trains(self, name: str) -> bool:
        part = _part(name)
        if part == "text":
            return self.config.train_text_encoder and self.epoch >= self.config.unfreeze_epochs.get("text", 0)
        if not name.startswith(PART_PREFIXES[self.config.parts]) or self._frozen_backbone(name):
            return False
        return self.epoch >= self.config.unfreeze_epochs.get(part, 0)

    def trains_text_tower(self) -> bool:
        return self.config.train_text_encoder

    def setup(self, model: ContinualModel) -> None:
        stem = "detector.backbone.stem."
        if self.config.frozen_backbone_stages and not any(n.startswith(stem) for n, _ in model.named_parameters()):
            backbone = type(model.detector.backbone).__name__
            raise ValueError(f"finetune: frozen_backbone_stages={self.config.frozen_backbone_stages} freezes the "
                             f"stem and stages of the CSPDarknet backbone, but this detector's backbone is "
                             f"{backbone}, which has none, so nothing would be frozen; set frozen_backbone_stages "
                             f"to 0 (parts 'neck+head' freezes the whole backbone)")

    def mark_trainable(self, model: ContinualModel) -> None:
        for name, param in model.named_parameters():
            if name.startswith(("detector.", "text_encoder.")):
                param.requires_grad_(self._trains(name))

    def optimizer_parameter_names(self, model: ContinualModel) -> set[str]:
        """Every parameter that trains at some epoch (progressive unfreezing included)."""
        current = self.epoch
        self.epoch = 10**9
        names = {n for n, _ in model.named_parameters() if self._trains(n)}
        self.epoch = current
        return names

    def parameter_lr_multipliers(self) -> dict[str, float]:
        multipliers = {f"{prefix}": self.config.lr_multipliers[part]
                       for prefix, part in _PART_OF_PREFIX.items() if part in self.config.lr_multipliers}
        multipliers.setdefault("text_encoder.", self.config.text_lr_factor)
        return multipliers

    def before_task(self, model: ContinualModel, task: TaskContext) -> None:
        # `unfreeze_epochs` counts from each task's first epoch; the model re-marks after this hook
        self.epoch = 0

    def before_epoch(self, model: ContinualModel, epoch: int) -> None:
        if self.config.unfreeze_epochs:
            self.epoch = epoch
            self.mark_trainable(model)
            model.train(model.training)
