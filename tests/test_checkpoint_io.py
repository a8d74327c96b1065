"""Checkpoint safety, unreadable files, and the official layout round trip (save -> load gives the same model)."""
import io
import pickle
import re
import sys
import types

import pytest
import torch

from cl_detect import create_detector, load_official_checkpoint, save_official_checkpoint
from cl_detect.models._checkpoint_io import atomic_save, read_checkpoint
from cl_detect.models.checkpoint import load_model
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


def test_prompt_tuned_embeddings_beside_a_text_tower_are_reported_not_dropped(capsys):
    """The official prompt-tuned detector feeds its `embeddings` whatever else the file holds; beside a
    text tower they were dropped without a word, and the returned tower gives other outputs."""
    from cl_detect.models.text_encoders import create_text_encoder
    state_dict = official_state_dict(create_detector("yolo_world_v2_t"), create_text_encoder("clip"))
    state_dict["embeddings"] = torch.randn(3, 512)
    load_official_checkpoint(state_dict)
    assert "its 3 prompt-tuned class embeddings are NOT used" in capsys.readouterr().out


def test_prompt_tuned_checkpoint_with_mlp_adapter_gives_the_adapted_embeddings(capsys):
    """An official use_mlp_adapter=True file: its adapter.* tensors were 'ignored' and the raw
    embeddings used, where the official detector uses normalize(adapter(E) + E)."""
    torch.manual_seed(0)
    embeddings = torch.randn(3, 512)
    adapter = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512))
    state_dict = official_state_dict(create_detector("yolo_world_v2_t"), FixedTextEmbeddings(embeddings))
    state_dict.update({f"adapter.{k}": v for k, v in adapter.state_dict().items()})
    _, text_encoder = load_official_checkpoint(state_dict)
    assert "3 prompt-tuned class embeddings (MLP adapter applied)" in capsys.readouterr().out
    with torch.no_grad():
        expected = torch.nn.functional.normalize(adapter(embeddings) + embeddings, dim=-1)
    torch.testing.assert_close(text_encoder(["a", "b", "c"]), expected)
    del state_dict["adapter.2.bias"]
    with pytest.raises(ValueError, match=r"part of an MLP adapter .*adapter.2.bias"):
        load_official_checkpoint(state_dict)


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


def test_detector_tensors_the_model_lacks_are_refused_other_keys_reported(capsys):
    """A YOLO-World v1 'dual_vlpan' checkpoint loaded with its image-pooling attention
    (neck.text_enhancer, which changes the text embeddings) listed as 'ignored': another model."""
    state_dict = official_state_dict(create_detector("yolo_world_v2_t", use_bn_head=False))
    with pytest.raises(ValueError, match=r"1 detector tensors this YOLO-World v2 model lacks, e.g. "
                                         r"\['neck.text_enhancer.proj.weight'\].*delete them"):
        load_official_checkpoint({**state_dict, "neck.text_enhancer.proj.weight": torch.zeros(512, 256)})
    load_official_checkpoint({**state_dict, "data_preprocessor.mean": torch.zeros(3)})
    assert "unexpected (ignored): ['data_preprocessor.mean']" in capsys.readouterr().out


def test_wrapped_or_cl_detect_named_state_dicts_say_what_to_pass(tmp_path):
    """These used to end in 'expected a checkpoint path, ...' or 'missing backbone.image_model...',
    naming neither the file, nor the entries found, nor the fix."""
    detector = create_detector("yolo_world_v2_t")
    state_dict = official_state_dict(detector)
    with pytest.raises(ValueError, match=r"1 of its 1 entries are not tensors \(\['ema'\]\).*pass checkpoint\['ema'\]"):
        load_official_checkpoint({"ema": state_dict})
    with pytest.raises(ValueError, match=r"entries are not tensors \(\['steps'\]\)"):
        load_official_checkpoint({"state_dict": {**state_dict, "steps": 3}})
    trainer_state = tmp_path / "checkpoint.pt"
    torch.save({"model": {"detector.head.proj": torch.zeros(1)}, "optimizer": {}, "progress": {}}, trainer_state)
    with pytest.raises(ValueError,
                       match=f"^{re.escape(str(trainer_state))}: .*a cl_detect training state .*save_model"):
        load_model(trainer_state)
    bare = tmp_path / "bare.pt"
    torch.save(detector.state_dict(), bare)
    with pytest.raises(ValueError, match=f"^{re.escape(str(bare))}: not a YOLO-World checkpoint.*cl_detect module"):
        load_official_checkpoint(bare)


def test_a_text_encoder_of_another_width_for_an_official_checkpoint_is_named(tmp_path):
    """It was only refused at the first forward: 'text embeddings must be (B, N, 512), got (1, 2, 384)'."""
    weights = tmp_path / "official.pth"
    save_official_checkpoint(create_detector("yolo_world_v2_t"), weights)
    with pytest.raises(ValueError, match=f"^{re.escape(str(weights))}: the detector expects 512-d .*'minilm' gives"):
        load_model(weights, text_encoder_spec="minilm")


def test_a_cl_detect_checkpoint_that_does_not_fit_the_detector_is_named(tmp_path):
    """A missing tensor or an unknown config field raised torch's RuntimeError / a TypeError that named
    neither the file nor the fix (and `cl-detect predict` printed a traceback)."""
    from cl_detect.models.checkpoint import save_model
    weights = tmp_path / "model.pt"
    save_model(weights, create_detector("yolo_world_v2_t", text_dim=384), "minilm-random")
    data = torch.load(weights, weights_only=True)
    missing, newer = tmp_path / "missing.pt", tmp_path / "newer.pt"
    torch.save({**data, "detector": {k: v for k, v in data["detector"].items() if k != "head.proj"
                                     and not k.startswith("backbone.stem.conv")}}, missing)
    torch.save({**data, "detector_config": {**data["detector_config"], "new_field": 1}}, newer)
    for path, found in ((missing, "Missing key.*backbone.stem.conv.weight"), (newer, "new_field")):
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*do not fit.*{found}.*save_model"):
            load_model(path)


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("content, found", [
    (b"", "the file is empty"),
    (b'{"state_dict": {}}', "not a torch file: it starts with b'{\"state_dict"),
    (bytes(range(7, 107)), "not a torch file"),
    (b"checkpoint\nweights\n", "not a torch file"),  # starts like a pickle GLOBAL opcode
    (b"junk", "not a torch file: it starts with b'junk'"),  # 'j' + 3 bytes: torch raised struct.error
    (b"\x80unk", "a pickle of 4 bytes .*truncated"),  # torch: ValueError 'unsupported pickle protocol: 117'
    ("zip_half", "a zip archive of .* bytes that is truncated or corrupted"),
    ("zip_cut_in_data", "a zip archive of 5000 bytes that is truncated or corrupted"),  # torch: bare OSError
    (pickle.dumps({"a": list(range(100))})[:40], "a pickle of 40 bytes .*truncated"),
], ids=["empty", "json", "binary", "text", "short_text", "bad_protocol", "truncated_zip", "zip_cut_in_data",
        "truncated_pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch says so about the damaged files on purpose
def test_unreadable_files_are_named(tmp_path, content, found):
    if content == "zip_half":
        whole = _torch_bytes({"x": torch.ones(64)})
        content = whole[:len(whole) // 2]
    if content == "zip_cut_in_data":
        content = _torch_bytes({"a": torch.ones(4096), "b": torch.ones(4096)})[:5000]
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"model.pth: not a readable torch checkpoint \\({found}.*re-saving") as info:
        read_checkpoint(path)
    assert info.value.__cause__ is not None  # torch's own error stays chained


def test_a_folder_given_as_checkpoint_is_called_a_folder(tmp_path):
    """A run's folder passed as --weights was reported as 'does not exist'."""
    with pytest.raises(IsADirectoryError, match=f"checkpoint {re.escape(str(tmp_path))} is a folder; give the"):
        read_checkpoint(tmp_path)


def test_refused_global_in_readable_file_keeps_its_error(tmp_path):
    path = tmp_path / "evil_legacy.pth"
    torch.save({"payload": types.SimpleNamespace(a=1)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle types.SimpleNamespace"):
        read_checkpoint(path)


class _CallsPrint:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_legacy_header_pickle_is_restricted_too(tmp_path, capsys):
    # torch's legacy reader unpickles the header with pickle_module.load, not Unpickler
    path = tmp_path / "header_payload.pth"
    path.write_bytes(pickle.dumps(_CallsPrint(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle .*print"):
        read_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_atomic_text_write_keeps_the_previous_file_when_writing_fails(tmp_path):
    from cl_detect.models._checkpoint_io import atomic_write_text

    path = tmp_path / "result.json"
    atomic_write_text(path, '{"ap": 0.5}\n')
    assert path.read_text() == '{"ap": 0.5}\n'
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "\ud800 cannot be encoded")  # fails half-way through the write
    assert path.read_text() == '{"ap": 0.5}\n' and [p.name for p in tmp_path.iterdir()] == ["result.json"]



def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    import os

    from cl_detect.models._checkpoint_io import atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "result.json", "{}\n")
        atomic_save({"x": torch.zeros(1)}, tmp_path / "state.pt")
    finally:
        os.umask(previous)
    # mkstemp alone makes owner-only files, which a shared results folder's readers cannot open
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}


def test_a_checkpoint_of_a_timm_pretrained_backbone_loads_without_downloading(tmp_path, monkeypatch):
    """Its config keeps pretrained_backbone=True, so loading fetched timm's weights again (offline: a
    LocalEntryNotFoundError) only to overwrite them with the file's."""
    from _timm_checkpoint import timm_pretrained_checkpoint

    weights = tmp_path / "model.pt"
    detector = timm_pretrained_checkpoint(weights, monkeypatch)
    loaded, _ = load_model(weights)
    for name, value in detector.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
