"""`zeroshot`: the untouched base model, evaluated on every task (no training).

It is a trainer (it decides which parameters train: none), so `finetune` is
not added to it and no other trainer can be combined with it. The runner
reads `skips_training` and leaves out `train_one_task` for every task
(`cl_detect.bench.baselines.skips_training`); the evaluations then still
fill every row of the matrices.
"""
from __future__ import annotations

from cl_detect.methods.base import ContinualModel, Method


class ZeroShotMethod(Method):
    is_trainer = True
    skips_training = True
    # these would change the model or the data although nothing trains, so the result would not be zero-shot
    incompatible_with = ("distill", "ewc", "mix", "replay", "wise")

    def incompatibility_reason(self) -> str:
        return "zeroshot trains nothing, so regularisers, replay and weight interpolation have nothing to act on"

    def mark_trainable(self, model: ContinualModel) -> None:
        """Every parameter stays frozen (the model froze them all before calling this)."""
        for param in model.parameters():
            param.requires_grad_(False)
