"""`prompt`: embeddings from the encoder, exact trainable set, training, export/import, state round trip."""
import numpy as np
import pytest
import torch

from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.methods import TaskContext, create_method
from cl_detect.models.official import FixedTextEmbeddings, load_official_checkpoint

from _adapter_fixtures import (TEXT_DIM, VOCABULARY, eval_logits, names_with_grad, prompt_batch, task_dataset,
                               tiny_model, train_config, train_steps)

OTHERS = ["person", "car", ""]


def _prompt_model(adapter=False, seed=0):
    model = tiny_model([("prompt", {"use_mlp_adapter": adapter})], seed=seed)
    model.hook("before_task", TaskContext(0, "colours", VOCABULARY))
    return model


def _same(first, second, atol=1e-5):
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("adapter", [False, True])
def test_exactly_the_embeddings_and_adapter_get_gradients(adapter):
    model = _prompt_model(adapter)
    method = model.method("prompt")
    torch.testing.assert_close(method.embeddings.detach(), model.text_encoder(list(VOCABULARY)))
    expected = {"methods.0.embeddings"} | ({f"methods.0.adapter.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
                                           if adapter else set())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    adapter_size = (TEXT_DIM * 2 * TEXT_DIM + 2 * TEXT_DIM + 2 * TEXT_DIM * TEXT_DIM + TEXT_DIM) if adapter else 0
    assert model.parameter_counts()[0] == len(VOCABULARY) * TEXT_DIM + adapter_size
    assert names_with_grad(model, prompt_batch()) == expected


def test_prompts_map_to_their_rows_and_other_strings_to_the_encoder():
    model = _prompt_model()
    method = model.method("prompt")
    with torch.no_grad():
        method.embeddings.add_(torch.randn_like(method.embeddings))  # learned rows differ from the encoder's
    texts = [["blue thing", "", "red thing"], ["person", "green thing", "car"]]
    rows = model.embed_texts(texts)
    lookup = dict(zip(VOCABULARY, method.embeddings.detach()))
    encoder = dict(zip(OTHERS, model.text_encoder(OTHERS)))
    for image_texts, image_rows in zip(texts, rows):
        for text, row in zip(image_texts, image_rows):
            torch.testing.assert_close(row, lookup[text] if text in lookup else encoder[text])


@pytest.mark.parametrize("adapter", [False, True])
def test_training_lowers_the_loss_and_keeps_other_vocabularies_exact(adapter):
    model = _prompt_model(adapter)
    images = prompt_batch(seed=3)["images"]
    plain = tiny_model([("finetune", {})])
    # the zero-initialised adapter re-normalises unit rows: equal up to float rounding
    _same(eval_logits(model, images, list(VOCABULARY)), eval_logits(plain, images, list(VOCABULARY)),
          atol=1e-4 if adapter else 0)
    other_before = eval_logits(model, images, OTHERS)
    history = train_steps(model, prompt_batch(), steps=8)
    assert history[-1] < history[0]
    assert (model.method("prompt").embeddings.detach() - model.text_encoder(list(VOCABULARY))).abs().max() > 1e-3
    _same(other_before, eval_logits(model, images, OTHERS), atol=0)


@pytest.mark.parametrize("adapter", [False, True])
def test_export_npy_and_official_checkpoint_round_trip(tmp_path, adapter):
    model = _prompt_model(adapter)
    train_steps(model, prompt_batch(), steps=3)
    method = model.method("prompt")
    path = method.export_embeddings(tmp_path / "embeddings.npy")
    exported = np.load(path)
    assert exported.shape == (len(VOCABULARY), TEXT_DIM) and exported.dtype == np.float32
    np.testing.assert_allclose(exported, method.learned_embeddings().detach().numpy(), atol=0)
    torch.save({"state_dict": method.official_state_dict()}, tmp_path / "prompt.pth")
    detector, encoder = load_official_checkpoint(tmp_path / "prompt.pth")
    assert isinstance(encoder, FixedTextEmbeddings)
    np.testing.assert_allclose(encoder.embeddings.numpy(), exported, atol=0)
    images = prompt_batch(seed=4)["images"]
    model.eval()
    with torch.no_grad():
        ours = model.detector(images, method.learned_embeddings()[None].expand(2, -1, -1))
        theirs = detector(images, encoder.embeddings[None].expand(2, -1, -1))
        # same weights in a second module instance: equal up to float32 kernel rounding
        _same(ours.cls_logits + ours.bbox_preds, theirs.cls_logits + theirs.bbox_preds, atol=1e-4)
        if adapter:  # adapted embeddings are unit-norm, so the loader's normalised table gives the same outputs
            loaded = detector(images, encoder(list(VOCABULARY))[None].expand(2, -1, -1))
            _same(ours.cls_logits, loaded.cls_logits, atol=1e-4)


def test_state_round_trip_through_torch_save(tmp_path):
    model = _prompt_model(adapter=True)
    train_steps(model, prompt_batch(), steps=2)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = tiny_model([("prompt", {"use_mlp_adapter": True})], seed=4)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.method("prompt").vocabulary == list(VOCABULARY)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    images = prompt_batch(seed=5)["images"]
    texts = list(VOCABULARY) + OTHERS
    _same(eval_logits(model, images, texts), eval_logits(fresh, images, texts), atol=0)


def test_next_task_freezes_learned_rows_and_starts_new_ones_from_the_encoder():
    model = _prompt_model()
    train_steps(model, prompt_batch(), steps=2)
    method = model.method("prompt")
    learned = dict(zip(VOCABULARY, method.embeddings.detach().clone()))
    second = ("red thing", "pink thing")
    model.hook("before_task", TaskContext(1, "more", second))
    assert method.vocabulary == list(second) and method.frozen_vocabulary == ["green thing", "blue thing"]
    torch.testing.assert_close(method.embeddings.detach()[0], learned["red thing"])  # reused
    torch.testing.assert_close(method.embeddings.detach()[1], model.text_encoder(["pink thing"])[0])
    rows = model.embed_texts([["blue thing", "pink thing"]])[0]
    torch.testing.assert_close(rows[0], learned["blue thing"])
    assert not method.frozen_embeddings.requires_grad and model.parameter_counts()[0] == 2 * TEXT_DIM


def test_config_composition_and_export_errors():
    with pytest.raises(ValueError):
        create_method("prompt", {"use_mlp_adapter": "yes"})
    with pytest.raises(ValueError, match="list only one"):
        tiny_model([("prompt", {}), ("lora", {})])
    untouched = tiny_model([("prompt", {})])
    with pytest.raises(ValueError, match="before_task"):
        untouched.method("prompt").export_embeddings("never.npy")
    with pytest.raises(ValueError, match="repeats"):
        untouched.hook("before_task", TaskContext(0, "dup", ("a", "a")))


def test_train_one_task_trains_the_embeddings(tmp_path):
    model = _prompt_model()
    start = model.method("prompt").embeddings.detach().clone()
    config = train_config()
    dataset, sampler = build_task_training_set(task_dataset(tmp_path / "data"), [], config)
    result = train_one_task(model, dataset, config, tmp_path / "run", sampler=sampler)
    assert result.status == "finished"
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    torch.testing.assert_close(saved["methods.0.embeddings"], model.method("prompt").embeddings.detach())
    assert (saved["methods.0.embeddings"] - start).abs().max() > 0


def test_a_task_without_a_class_list_is_refused_by_name():
    # grounding data (captions and phrases) has no class list: torch.stack([]) failed deep inside before_task
    model = tiny_model([("prompt", {})])
    with pytest.raises(ValueError, match="prompt: task 'captions' has no class list"):
        model.hook("before_task", TaskContext(0, "captions", ()))


def test_images_without_a_task_class_warn_once_per_task_that_they_give_no_gradient(caplog):
    # replayed / mixed-in images of other vocabularies gave exactly zero gradient without a word
    model = _prompt_model(adapter=True)
    other = {**prompt_batch(), "texts": [list(OTHERS)] * 2}
    with caplog.at_level("WARNING", logger="cl_detect.methods.prompt.method"):
        names_with_grad(model, prompt_batch())
        assert not caplog.records  # the task's own images name its classes
        model.zero_grad(set_to_none=True)
        model(other)["loss"].backward()
        assert all(p.grad is None or not p.grad.any() for p in model.parameters())
        model(other)
        model.hook("before_task", TaskContext(1, "shapes", ("square", "circle")))
        model(other)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "2 of 2 images" in warnings[0] and "no gradient" in warnings[0]
