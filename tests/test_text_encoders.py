"""Text encoders: exactness against the official YOLO-World text tower, HF key mapping,
per-vocabulary cache, offline MiniLM, and spec parsing. Nothing is downloaded."""
from __future__ import annotations

import copy
import importlib.util
import logging
import socket

import numpy as np
import pytest
import torch

from cl_detect.models import text_encoders
from cl_detect.models.text_encoders import (ClipTextEncoder, SentenceTransformerEncoder, TextEncoder,
                                            create_text_encoder)

TEXT_PREFIX = "backbone.text_model.model."
POSITION_IDS = "text_model.embeddings.position_ids"
# A small CLIP text tower for tests of behaviour rather than numbers.
SMALL_CFG = dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)


@pytest.fixture(scope="module")
def fixture_dir(shared):
    return shared / "fixtures" / "yolo_world"


@pytest.fixture(scope="module")
def official_text_sd(fixture_dir):
    """The 197 text-tower tensors of the official S state dict, prefix stripped."""
    spec = importlib.util.spec_from_file_location("official_weights", fixture_dir / "official_weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    manifest = weights.load_manifest(fixture_dir / "manifest_v2_s.json")
    # Tensors are seeded per key, so building only the text keys gives the same values.
    text_manifest = [entry for entry in manifest if entry[0].startswith(TEXT_PREFIX)]
    return {k[len(TEXT_PREFIX):]: v for k, v in weights.make_state_dict(text_manifest).items()}


@pytest.fixture(scope="module")
def official_encoder(official_text_sd):
    return ClipTextEncoder.from_hf_state_dict(official_text_sd)


@pytest.fixture(scope="module")
def reference_s(fixture_dir):
    return np.load(fixture_dir / "reference_v2_s.npz")


def small_encoder() -> ClipTextEncoder:
    return ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32)


# --------------------------------------------------------------- official fixture
def test_official_text_tower_has_197_tensors(official_text_sd, official_encoder):
    assert len(official_text_sd) == 197
    assert official_encoder.load_report.startswith("loaded 197/197 text tensors")
    assert official_encoder.dim == 512


def test_tokens_match_fixture_up_to_padding(official_encoder, reference_s):
    texts = [str(t) for t in reference_s["texts"]]
    tokens = official_encoder.tokenize(texts).numpy()
    fixture = reference_s["input_ids"].copy()
    # HF pads with end-of-text (49407), open_clip with 0: keep the first EOT, zero the rest.
    first_eot = (fixture == 49407).argmax(axis=1)
    fixture[np.arange(fixture.shape[1])[None, :] > first_eot[:, None]] = 0
    np.testing.assert_array_equal(tokens[:, : fixture.shape[1]], fixture)
    assert (tokens[:, fixture.shape[1]:] == 0).all()


@pytest.mark.parametrize("size", ["s", "m", "l", "x"])
def test_text_features_match_official(official_encoder, reference_s, fixture_dir, size):
    reference = np.load(fixture_dir / f"reference_v2_{size}.npz")
    texts = [str(t) for t in reference["texts"]]
    assert texts == [str(t) for t in reference_s["texts"]]
    emb = official_encoder(texts)
    assert emb.shape == (6, 512) and emb.dtype == torch.float32
    err = (emb - torch.from_numpy(reference["txt_feats"][0])).abs().max().item()
    assert err <= 1e-5, f"max abs error {err:.2e} vs reference_v2_{size}.npz"
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(6), atol=1e-5, rtol=0)


def test_truncated_forward_equals_open_clip_forward(official_encoder):
    texts = ["person", "a photo of a cat", " ", ""]
    tokens = official_encoder.tokenize(texts)
    with torch.no_grad():
        full = official_encoder.tower(tokens)  # open_clip's own forward over all 77 positions
        short = official_encoder.encode(texts)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_blank_prompts_work(official_encoder):
    emb = official_encoder(["", " "])
    assert torch.isfinite(emb).all()
    # Both are the official blank prompt: start + end token only.
    torch.testing.assert_close(emb[0], emb[1])


def test_prompts_longer_than_the_context_are_cut_with_one_warning(caplog):
    """They were cut to 77 tokens without a word (the official code fails on them instead)."""
    encoder = small_encoder()
    fits, too_long = "word " * 75, "word " * 76  # + start and end tokens: 77 and 78
    with caplog.at_level(logging.WARNING, logger="cl_detect.models.text_encoders"):
        encoder(["dog", fits])
        assert caplog.records == []
        tokens = encoder.tokenize(["dog", too_long, "cat " * 90])
        encoder.tokenize(["x " * 100])
    assert [r.getMessage()[:73] for r in caplog.records] == [
        "2 of 3 prompts are longer than the text tower's 77 tokens and were cut to"]
    assert "(78 tokens)" in caplog.records[0].getMessage()
    assert tokens.shape == (3, 77) and tokens[1, -1] == tokens[1].max()  # cut, ending with the end token


def test_minilm_names_prompts_cut_at_its_256_tokens(caplog):
    encoder = SentenceTransformerEncoder()
    with caplog.at_level(logging.WARNING, logger="cl_detect.models.text_encoders"):
        encoder(["dog", "word " * 250])  # 250 words + [CLS] and [SEP]: fits
        assert caplog.records == []
        encoder(["cat", "word " * 300])
        encoder(["bird", "word " * 400])  # once per encoder
    assert [r.getMessage()[:74] for r in caplog.records] == [  # and counting them adds no transformers warning
        "1 of 2 prompts are longer than the text tower's 256 tokens and were cut to"]
    assert "(302 tokens)" in caplog.records[0].getMessage()


def test_minilm_names_prompts_with_words_its_tokenizer_does_not_know(caplog):
    # MiniLM's WordPiece reads emoji, Chinese, Thai, Hindi as [UNK]: a vocabulary in those
    # scripts embedded every class alike, without a word
    encoder = SentenceTransformerEncoder()
    with caplog.at_level(logging.WARNING, logger="cl_detect.models.text_encoders"):
        encoder(["dog", "рыба", "", " "])  # Cyrillic is in its vocabulary
        assert caplog.records == []
        fish = encoder(["魚", "ปลา", "dog"])
        encoder(["🐟"])  # once per encoder
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("2 of 3 prompts hold words the tokenizer of")
    assert "'魚'" in caplog.records[0].getMessage()
    assert float(fish[0] @ fish[1]) > 0.9999  # why it matters: two unknown names, one embedding


@pytest.mark.parametrize("bad", [None, float("nan"), 3, b"dog"])
def test_a_text_that_is_not_a_string_is_named_by_position(bad):
    """They failed inside the tokenizer ("object of type 'NoneType' has no len()", ftfy's UnicodeError)."""
    with pytest.raises(TypeError, match=r"texts\[1\] is .* \((NoneType|float|int|bytes)\); check the class names"):
        small_encoder()(["dog", bad])


# ------------------------------------------------------------------ HF mapping
def test_hf_round_trip(official_text_sd):
    with_position_ids = dict(official_text_sd, **{POSITION_IDS: torch.arange(77)[None]})
    encoder = ClipTextEncoder.from_hf_state_dict(with_position_ids)
    assert encoder.load_report.startswith("loaded 197/197 text tensors")
    assert POSITION_IDS in encoder.load_report
    back = encoder.to_hf_state_dict()
    assert list(back) == list(official_text_sd)  # same keys, same (official) order
    for key, tensor in official_text_sd.items():
        assert torch.equal(back[key], tensor), key


def test_shape_mismatch_names_key(official_text_sd):
    key = "text_model.encoder.layers.3.mlp.fc1.weight"
    broken = dict(official_text_sd, **{key: torch.zeros(1024, 512)})
    with pytest.raises(ValueError, match=r"shape mismatch .*layers\.3\.mlp\.fc1\.weight"):
        ClipTextEncoder.from_hf_state_dict(broken)


def test_missing_key_names_key(official_text_sd):
    key = "text_model.encoder.layers.5.self_attn.v_proj.bias"
    broken = {k: v for k, v in official_text_sd.items() if k != key}
    with pytest.raises(ValueError, match=r"missing text tensor .*layers\.5\.self_attn\.v_proj\.bias"):
        ClipTextEncoder.from_hf_state_dict(broken)


def test_unexpected_text_key_is_an_error():
    encoder = small_encoder()
    hf = encoder.to_hf_state_dict()
    hf["text_model.encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="rotary"):
        encoder.load_hf_state_dict(hf)


def test_load_from_files_in_both_layouts(tmp_path):
    source = small_encoder()
    expected = source(["dog", "red car"])
    # HF layout inside an official-style checkpoint, with detector keys to skip.
    official = {TEXT_PREFIX + k: v for k, v in source.to_hf_state_dict().items()}
    official["neck.conv.weight"] = torch.zeros(2)
    torch.save({"state_dict": official}, tmp_path / "official.pth")
    # open_clip layout of a full CLIP model (vision tower and logit_scale to skip).
    clip_sd = {k: v.clone() for k, v in source.tower.state_dict().items()}
    clip_sd.update({"visual.proj": torch.zeros(4, 32), "logit_scale": torch.tensor(4.6)})
    torch.save(clip_sd, tmp_path / "open_clip.pt")
    # 2 layers: 5 + 16 * 2 HF tensors, 5 + 12 * 2 open_clip tensors.
    for name, report in (("official.pth", "loaded 37/37 text tensors; ignored 1 non-text"),
                         ("open_clip.pt", "loaded 29/29 text tensors; ignored logit_scale")):
        torch.manual_seed(1)  # a different random init, so loading must change the output
        loaded = ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32, pretrained=str(tmp_path / name))
        assert loaded.load_report.startswith(report), loaded.load_report
        torch.testing.assert_close(loaded(["dog", "red car"]), expected, atol=1e-6, rtol=0)


class _OpenAIStyleClip(torch.nn.Module):
    """CLIP with OpenAI's top-level names, to be saved as a TorchScript archive like OpenAI's `.pt` files."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.token_embedding, self.transformer, self.ln_final = tower.token_embedding, tower.transformer, tower.ln_final
        self.positional_embedding, self.text_projection = tower.positional_embedding, tower.text_projection
        self.visual = torch.nn.Linear(2, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_openai_torchscript_fp16_file(tmp_path):
    source = small_encoder()
    source.tower.half().float()  # make the weights exactly representable in fp16, as in OpenAI's files
    expected = source(["dog", "red car"])
    archive = torch.jit.trace(_OpenAIStyleClip(copy.deepcopy(source.tower)).half(), torch.zeros(1, 3, dtype=torch.long))
    archive.save(str(tmp_path / "ViT-tiny.pt"))
    loaded = ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32, pretrained=str(tmp_path / "ViT-tiny.pt"))
    assert loaded.load_report.startswith("loaded 29/29 text tensors; ignored 2 non-text"), loaded.load_report
    torch.testing.assert_close(loaded(["dog", "red car"]), expected, atol=1e-6, rtol=0)


def test_a_file_of_another_tower_or_a_broken_safetensors_is_named(tmp_path):
    # the shape mismatch did not name the file; a broken .safetensors raised SafetensorError, which the
    # CLI does not catch (a traceback)
    torch.save(small_encoder().tower.state_dict(), tmp_path / "small.pt")
    (tmp_path / "cut.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"small\.pt, loaded as the text tower of ViT-B-32: shape mismatch.*name the"):
        create_text_encoder(f"clip:ViT-B-32:{tmp_path / 'small.pt'}")
    with pytest.raises(ValueError, match=r"cut\.safetensors: not a readable safetensors file.*re-download"):
        create_text_encoder(f"clip:ViT-B-32:{tmp_path / 'cut.safetensors'}")


def test_unknown_tag_lists_valid_tags():
    encoder = ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32, model_name="ViT-B-32")
    with pytest.raises(ValueError, match="openai"):
        encoder.load_pretrained("no-such-tag")


def test_tag_with_other_activation_is_refused_before_download():
    # laion2b tags of ViT-B-32 were trained with nn.GELU; the default here is QuickGELU.
    encoder = ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32, model_name="ViT-B-32")
    with pytest.raises(ValueError, match="quick_gelu=False"):
        encoder.load_pretrained("laion2b_s34b_b79k")


def test_a_tag_sets_the_activation_it_was_trained_with(monkeypatch):
    # so the spec clip:ViT-B-32:laion2b_s34b_b79k works without a way to pass quick_gelu
    loaded = []
    monkeypatch.setattr(ClipTextEncoder, "load_pretrained", lambda self, tag: loaded.append((tag, self.quick_gelu)))
    ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32, model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32, model_name="ViT-B-32", pretrained="openai")
    assert loaded == [("laion2b_s34b_b79k", False), ("openai", True)]
    assert ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32, model_name="ViT-B-32").quick_gelu  # YOLO-World's


# ----------------------------------------------------------------------- cache
def count_tower_calls(encoder: ClipTextEncoder) -> list[int]:
    calls = []
    encoder.tower.transformer.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_frozen_tower_is_cached_per_vocabulary():
    encoder = small_encoder()
    calls = count_tower_calls(encoder)
    first = encoder(["dog", "cat"])
    second = encoder(["dog", "cat"])
    assert len(calls) == 1
    torch.testing.assert_close(first, second)
    second.add_(1.0)  # callers get copies: the cache must be unaffected
    torch.testing.assert_close(encoder(["dog", "cat"]), first)
    encoder(["cat", "dog"])  # another vocabulary (order matters) runs the tower
    assert len(calls) == 2
    encoder.clear_cache()
    encoder(["dog", "cat"])
    assert len(calls) == 3


def test_cache_drops_when_weights_change():
    encoder = small_encoder()
    calls = count_tower_calls(encoder)
    before = encoder(["dog"])
    with torch.no_grad():
        encoder.tower.text_projection.mul_(-1.0)
    after = encoder(["dog"])
    assert len(calls) == 2
    torch.testing.assert_close(after, -before)


def test_the_models_prompt_cache_drops_when_the_towers_weights_change():
    from cl_detect import create_detector
    from cl_detect.methods import ContinualModel, create_method
    encoder = small_encoder()
    model = ContinualModel(create_detector("yolo_world_v2_t", text_dim=32), encoder, [create_method("finetune")])
    with torch.no_grad():
        before = model.embed_texts([["dog", "cat"]])
        encoder.load_state_dict({k: -v if k.endswith("text_projection") else v
                                 for k, v in encoder.state_dict().items()})
        after = model.embed_texts([["dog", "cat"]])
    torch.testing.assert_close(after, -before)


@pytest.mark.parametrize("replace", ["assign", "data"])
def test_cache_drops_when_weights_are_replaced_rather_than_written(replace):
    # load_state_dict(assign=True) and `param.data = ...` swap in new tensors whose version
    # counters match the old ones: the cache and the model's prompt cache gave the old embeddings
    from cl_detect import create_detector
    from cl_detect.methods import ContinualModel, create_method
    encoder = small_encoder()
    model = ContinualModel(create_detector("yolo_world_v2_t", text_dim=32), encoder, [create_method("finetune")])
    other = small_encoder()  # other weights, built the same way: the same version counters
    with torch.no_grad():
        encoder(["dog"]), model.embed_texts([["dog"]])
        if replace == "assign":
            encoder.load_state_dict(other.state_dict(), assign=True)
        else:
            for mine, theirs in zip(encoder.parameters(), other.parameters()):
                mine.data = theirs.detach().clone()
        expected = other(["dog"])
        torch.testing.assert_close(encoder(["dog"]), expected)
        torch.testing.assert_close(model.embed_texts([["dog"]])[0], expected)


def test_trainable_tower_is_not_cached_and_gets_gradients():
    encoder = small_encoder().requires_grad_(True).train()
    calls = count_tower_calls(encoder)
    loss = encoder(["dog", "cat"]).sum() + encoder(["dog", "cat"]).sum()
    assert len(calls) == 2
    loss.backward()
    assert encoder.tower.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0
    with torch.no_grad():  # no gradient can flow: cached again
        encoder(["dog", "cat"])
        encoder(["dog", "cat"])
    assert len(calls) == 3


def test_encoders_start_frozen_and_reject_a_bare_string():
    encoder = small_encoder()
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    assert isinstance(encoder, TextEncoder)
    assert encoder([]).shape == (0, 32)
    with pytest.raises(TypeError):
        encoder("dog")


# ---------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm():
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading the offline MiniLM")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        encoder = SentenceTransformerEncoder()
        encoder(["warm up"])
    return encoder


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def test_minilm_offline_embeddings(minilm):
    emb = minilm(["dog", "puppy", "aeroplane", "", " "])
    assert minilm.dim == 384 and emb.shape == (5, 384)
    assert not any(p.requires_grad for p in minilm.parameters()) and not minilm.training
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5), atol=1e-5, rtol=0)
    assert cosine(emb[0], emb[1]) > cosine(emb[0], emb[2]) + 0.1


def test_minilm_matches_sentence_transformers_encode(minilm):
    texts = ["a red car", "traffic light"]
    reference = minilm.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(minilm(texts), reference.float(), atol=1e-5, rtol=0)


def test_minilm_is_differentiable_when_trained(minilm):
    minilm.requires_grad_(True)
    try:
        emb = minilm(["dog", "cat"])
        assert emb.requires_grad
        emb[0].dot(emb[1]).backward()
        grads = [p.grad for p in minilm.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0
    finally:
        minilm.requires_grad_(False).zero_grad(set_to_none=True)
        minilm.eval()


def test_minilm_random_init_changes_embeddings_and_follows_the_seed(minilm):
    torch.manual_seed(0)
    random_a = SentenceTransformerEncoder(random_init=True)
    torch.manual_seed(0)
    random_b = SentenceTransformerEncoder(random_init=True)
    texts = ["dog", "puppy"]
    pretrained, emb_a = minilm(texts), random_a(texts)
    assert random_a.dim == 384
    assert (pretrained - emb_a).abs().max() > 0.1
    torch.testing.assert_close(emb_a, random_b(texts))


# ----------------------------------------------------------------------- specs
@pytest.mark.parametrize("spec, expected", [
    ("clip", ("clip", "ViT-B-32", None)),
    ("clip:ViT-B-16", ("clip", "ViT-B-16", None)),
    ("clip:ViT-B-32:openai", ("clip", "ViT-B-32", "openai")),
    ("clip:ViT-L-14-336:/data/w:v2/file.pt", ("clip", "ViT-L-14-336", "/data/w:v2/file.pt")),
    ("minilm", ("st", None, False)),
    ("minilm-random", ("st", None, True)),
    ("sentence-transformers:/models/e5", ("st", "/models/e5", False)),
])
def test_spec_parsing(monkeypatch, spec, expected):
    monkeypatch.setattr(text_encoders, "ClipTextEncoder",
                        lambda name, pretrained=None, **kw: ("clip", name, pretrained))
    monkeypatch.setattr(text_encoders, "SentenceTransformerEncoder",
                        lambda path=None, random_init=False, **kw: ("st", path, random_init))
    assert create_text_encoder(spec) == expected


def test_spec_builds_a_clip_tower_only():
    encoder = create_text_encoder("clip:ViT-B-32", quick_gelu=False)
    assert isinstance(encoder, ClipTextEncoder) and encoder.dim == 512
    assert not any(name.startswith("visual") for name, _ in encoder.named_parameters())
    assert encoder(["dog"]).shape == (1, 512)


def test_a_hub_tokenizer_that_cannot_be_fetched_names_the_model_and_the_fix(monkeypatch):
    # SigLIP towers tokenize with a HuggingFace tokenizer; offline, the hub's raw OSError named neither
    import open_clip

    def offline(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    with pytest.raises(OSError, match=r"ViT-B-16-SigLIP \(HuggingFace 'timm/ViT-B-16-SigLIP'\).*network access"):
        create_text_encoder("clip:ViT-B-16-SigLIP")


def test_weights_that_cannot_be_fetched_name_the_tag_and_a_local_file(monkeypatch):
    import open_clip

    def offline(cfg, **kwargs):
        raise FileNotFoundError("Failed to download file (open_clip_pytorch_model.bin)")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    encoder = ClipTextEncoder(text_cfg=SMALL_CFG, embed_dim=32, model_name="ViT-B-32")
    with pytest.raises(OSError, match=r"ViT-B-32:openai.*network access.*clip:ViT-B-32:/path/to/weights"):
        encoder.load_pretrained("openai")


def test_a_sentence_transformers_spec_names_a_missing_folder_or_hub_model(monkeypatch, tmp_path):
    import sentence_transformers

    with pytest.raises(FileNotFoundError, match="no sentence-transformers model folder at .*missing"):
        create_text_encoder(f"sentence-transformers:{tmp_path / 'missing'}")

    def offline(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", offline)
    with pytest.raises(OSError, match="'org/some-model'.*network access.*'minilm'"):
        create_text_encoder("sentence-transformers:org/some-model")


@pytest.mark.parametrize("spec", ["bert", "clip-vit", "sentence-transformers", "minilm:x"])
def test_unknown_spec_lists_valid_forms(spec):
    with pytest.raises(ValueError, match="valid forms: .*minilm-random"):
        create_text_encoder(spec)
