"""Load a checkpoint into a model of another configuration.

Every tensor whose name and shape match is copied; the rest keep their fresh
initialisation and are listed, so users see exactly what fine-tuning starts from
(another vocabulary size for a closed-set head, another text width, a timm backbone).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class TransferReport:
    """What `transfer_weights` did.

    Args:
        transferred: names copied from the checkpoint.
        total: number of tensors in the model's state dict.
        reinitialised: model tensors left at their initialisation (absent or shape differs).
        shape_mismatch: name -> (checkpoint shape, model shape).
        unused: checkpoint tensors the model has no place for.
        value_share: share of the model's values (elements of all its tensors) that were copied.
    """

    transferred: list[str]
    total: int
    reinitialised: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    value_share: float = 1.0

    def summary(self) -> str:
        text = f"transferred {len(self.transferred)}/{self.total} tensors"
        if self.reinitialised:
            text += f"; re-initialised {len(self.reinitialised)}: {', '.join(self.reinitialised)}"
        if self.unused:
            text += f"; unused checkpoint tensors: {len(self.unused)}"
        if self.value_share < 0.5:  # the tensor count hides it: BN counters and small heads match any size
            text += (f"; only {self.value_share:.1%} of the model's values came from the checkpoint: is it of "
                     f"another size or architecture? (the detector is built from `detector`, else the checkpoint's)")
        return text


def transfer_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], verbose: bool = True) -> TransferReport:
    """Copy matching tensors of `state_dict` into `model` and report the rest."""
    own = model.state_dict()
    matched, mismatch = {}, {}
    for name, value in state_dict.items():
        if name in own:
            if own[name].shape == value.shape:
                matched[name] = value
            else:
                mismatch[name] = (tuple(value.shape), tuple(own[name].shape))
    model.load_state_dict(matched, strict=False)
    values = sum(tensor.numel() for tensor in own.values())
    report = TransferReport(
        transferred=sorted(matched), total=len(own), reinitialised=[n for n in own if n not in matched],
        shape_mismatch=mismatch, unused=sorted(n for n in state_dict if n not in own),
        value_share=sum(tensor.numel() for tensor in matched.values()) / max(values, 1))
    if verbose:
        print(report.summary())
    return report
