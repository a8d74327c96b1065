"""Any timm model as the image backbone: its `features_only` maps at strides 8, 16, 32
feed the same YOLO-World neck and head (`backbone="timm:<model_name>"`)."""
from __future__ import annotations

import timm
import torch
from torch import nn

WANTED_STRIDES = (8, 16, 32)


class TimmBackbone(nn.Module):
    """Wrap `timm.create_model(name, features_only=True)` and return the stride 8/16/32 maps.

    Args:
        model_name: a timm model name (e.g. "resnet18", "convnext_tiny").
        pretrained: load timm's pretrained weights (downloads; only when the user asks).
    """

    def __init__(self, model_name: str, pretrained: bool = False):
        super().__init__()
        probe = timm.create_model(model_name, pretrained=False, features_only=True)
        reductions = list(probe.feature_info.reduction())
        missing = [s for s in WANTED_STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"timm model {model_name!r} has feature maps at strides {reductions}; "
                             f"YOLO-World needs strides {WANTED_STRIDES} (missing {missing})")
        indices = [reductions.index(s) for s in WANTED_STRIDES]
        del probe
        self.model = timm.create_model(model_name, pretrained=pretrained, features_only=True, out_indices=indices)
        self.channels = tuple(self.model.feature_info.channels())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(images))
