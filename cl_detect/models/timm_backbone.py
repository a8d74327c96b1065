"""Any timm model as the image backbone: its `features_only` maps at strides 8, 16, 32
feed the same YOLO-World neck and head (`backbone="timm:<model_name>"`)."""
from __future__ import annotations

import timm
import torch
from torch import nn

WANTED_STRIDES = (8, 16, 32)
# A small input that is not square: a backbone must take any size that is a multiple of 32.
PROBE_HW = (96, 128)


class TimmBackbone(nn.Module):
    """Wrap `timm.create_model(name, features_only=True)` and return the stride 8/16/32 maps.

    The model is checked when built: it must exist, have feature maps at strides 8, 16 and 32,
    and turn a non-square input into (B, C, H/s, W/s) maps with the channels its feature_info
    states (vision transformers with a fixed input size and channels-last models do not).

    Args:
        model_name: a timm model name (e.g. "resnet18", "convnext_tiny").
        pretrained: load timm's pretrained weights (downloads; only when the user asks).
    """

    def __init__(self, model_name: str, pretrained: bool = False):
        super().__init__()
        if not timm.is_model(model_name):
            family = model_name.split("_")[0].split(".")[0]
            raise ValueError(f"unknown timm model {model_name!r}; see timm.list_models('{family}*') "
                             f"for the names timm {timm.__version__} knows")
        probe = timm.create_model(model_name, pretrained=False, features_only=True)
        reductions = list(probe.feature_info.reduction())
        missing = [s for s in WANTED_STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"timm model {model_name!r} has feature maps at strides {reductions}; "
                             f"YOLO-World needs strides {WANTED_STRIDES} (missing {missing})")
        indices = [reductions.index(s) for s in WANTED_STRIDES]
        _check_feature_maps(model_name, probe, indices)
        del probe
        self.model = timm.create_model(model_name, pretrained=pretrained, features_only=True, out_indices=indices)
        self.channels = tuple(self.model.feature_info.channels())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(images))


@torch.no_grad()
def _check_feature_maps(model_name: str, model: nn.Module, indices: list[int]) -> None:
    """Run `model` (features_only, all levels) once on a PROBE_HW image; raise if the maps at
    `indices` are not (1, C, H/s, W/s) with feature_info's channels."""
    height, width = PROBE_HW
    fix = ("YOLO-World needs a backbone that takes any image size that is a multiple of 32 and returns "
           "channels-first maps; use a convolutional model such as resnet18, convnext_tiny or efficientnet_b0")
    try:
        feats = model.eval()(torch.zeros(1, 3, height, width))
    except (AssertionError, RuntimeError, ValueError) as err:
        raise ValueError(f"timm model {model_name!r} cannot run on a {height}x{width} image "
                         f"({type(err).__name__}: {err}); {fix}") from None
    channels = model.feature_info.channels()
    got = [tuple(feats[i].shape[1:]) for i in indices]
    want = [(channels[i], height // s, width // s) for i, s in zip(indices, WANTED_STRIDES)]
    if got != want:
        raise ValueError(f"timm model {model_name!r} gives feature maps of shape {got} for a {height}x{width} "
                         f"image where (C, H, W) = {want} was expected at strides {WANTED_STRIDES}; {fix}")
