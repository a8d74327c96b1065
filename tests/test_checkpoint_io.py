"""Checkpoint safety and the official layout round trip (save -> load gives the same model)."""
import pickle
import sys
import types

import pytest
import torch

from cl_detect import create_detector, load_official_checkpoint, save_official_checkpoint
from cl_detect.models._checkpoint_io import atomic_save, read_checkpoint
from cl_detect.models.official import FixedTextEmbeddings, infer_config, official_state_dict


def _fake_mmengine_checkpoint(path, state_dict):
    """Write a checkpoint whose meta holds an object of an 'mmengine' class, as official files do."""
    module = types.ModuleType("mmengine")

    class HistoryBuffer:
        def __init__(self):
            self.values = [1, 2, 3]

    HistoryBuffer.__module__ = module.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    sys.modules[module.__name__] = module
    try:
        torch.save({"state_dict": state_dict, "meta": {"hub": HistoryBuffer()}}, path)
    finally:
        del sys.modules[module.__name__]


def test_mmengine_pickle_loads_without_running_code(tmp_path):
    detector = create_detector("yolo_world_v2_t")
    state_dict = official_state_dict(detector)
    path = tmp_path / "official.pth"
    _fake_mmengine_checkpoint(path, state_dict)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = read_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["neck.top_down_layers.0.attn_block.bias"],
                       state_dict["neck.top_down_layers.0.attn_block.bias"])


def test_unknown_globals_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": types.SimpleNamespace(a=1)}, path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle types.SimpleNamespace"):
        read_checkpoint(path)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_save({"x": torch.ones(2)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"x": Unpicklable()}, target)
    assert torch.equal(torch.load(target)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("use_bn_head", [True, False])
def test_save_official_then_load_gives_identical_outputs(tmp_path, use_bn_head, capsys):
    detector = create_detector("yolo_world_v2_n", text_dim=512, use_bn_head=use_bn_head).eval()
    path = tmp_path / "finetuned.pth"
    save_official_checkpoint(detector, path)
    loaded, text_encoder = load_official_checkpoint(path)
    assert text_encoder is None
    assert "no text tower" in capsys.readouterr().out
    assert infer_config(read_checkpoint(path)["state_dict"]).widen == 0.25
    images, text = torch.rand(1, 3, 64, 64), torch.randn(1, 4, 512)
    with torch.no_grad():
        a, b = detector(images, text), loaded(images, text)
    for x, y in zip(a.cls_logits + a.bbox_preds, b.cls_logits + b.bbox_preds):
        assert torch.equal(x, y)


def test_prompt_tuned_checkpoint_gives_fixed_embeddings(capsys):
    detector = create_detector("yolo_world_v2_t")
    state_dict = official_state_dict(detector)
    state_dict["embeddings"] = torch.randn(3, 512)
    loaded, text_encoder = load_official_checkpoint(state_dict)
    assert isinstance(text_encoder, FixedTextEmbeddings)
    assert "3 prompt-tuned class embeddings" in capsys.readouterr().out
    emb = text_encoder(["a", "b", "c"])
    torch.testing.assert_close(emb, state_dict["embeddings"])  # un-normalised, as the official model uses them
    with pytest.raises(ValueError, match="holds 3 class embeddings, got 2"):
        text_encoder(["a", "b"])


def test_shape_mismatch_and_missing_keys_fail_loudly():
    state_dict = official_state_dict(create_detector("yolo_world_v2_t"))
    bad = dict(state_dict)
    bad["neck.top_down_layers.0.attn_block.guide_fc.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape mismatch for neck.top_down_layers.0.attn_block.guide_fc.bias"):
        load_official_checkpoint(bad)
    partial = {k: v for k, v in state_dict.items() if "reg_preds.2" not in k}
    with pytest.raises(ValueError, match="lacks .* detector tensors"):
        load_official_checkpoint(partial)
    with pytest.raises(ValueError, match="not a YOLO-World checkpoint"):
        load_official_checkpoint({"foo": torch.zeros(1)})
