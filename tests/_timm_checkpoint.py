"""A cl_detect checkpoint whose timm backbone was built from timm's pretrained weights, and timm
with downloads forbidden: loading such a file must not fetch weights the file already holds."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cl_detect.models.checkpoint import save_model
from cl_detect.models.registry import create_detector


def timm_pretrained_checkpoint(path: Path, monkeypatch) -> nn.Module:
    """Write the checkpoint (its config says `pretrained_backbone: True`), make any later
    `timm.create_model(pretrained=True)` fail the test, and return the detector it holds."""
    import timm

    detector = create_detector("yolo_world_v2_t", text_dim=384, backbone="timm:resnet18")
    save_model(path, detector, "minilm-random")
    data = torch.load(path, weights_only=True)
    torch.save({**data, "detector_config": {**data["detector_config"], "pretrained_backbone": True}}, path)
    create_model = timm.create_model

    def no_download(*args, pretrained=False, **kwargs):
        assert not pretrained, "downloaded timm weights the checkpoint holds"
        return create_model(*args, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_download)
    return detector
