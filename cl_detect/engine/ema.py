"""Exponential moving average of model weights with the official momentum schedule.

momentum(t) = (1 - m) * exp(-(1 + t) / gamma) + m   (m = 1e-4, gamma = 2000)
ema = ema * (1 - momentum) + model * momentum, for parameters and float buffers
(BatchNorm statistics are averaged too); integer buffers are copied. As in
mmengine's averaged models, the first update (t = 0) copies the model: the
weights before training never enter the average.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """EMA copy of a module, updated after every optimizer step.

    Args:
        model: the module to average (typically the detector).
        momentum: final momentum m.
        gamma: time constant of the momentum decay, in steps.
    """

    def __init__(self, model: nn.Module, momentum: float = 1e-4, gamma: float = 2000.0):
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.momentum = momentum
        self.gamma = gamma
        self.steps = 0

    def current_momentum(self) -> float:
        if self.steps == 0:  # the first update copies (mmengine BaseAveragedModel)
            return 1.0
        return (1 - self.momentum) * math.exp(-(1 + self.steps) / self.gamma) + self.momentum

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        momentum = self.current_momentum()
        source = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = source[name].detach()
            if average.dtype.is_floating_point:
                average.mul_(1 - momentum).add_(value.to(average.dtype), alpha=momentum)
            else:
                average.copy_(value)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
