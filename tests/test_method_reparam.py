"""`reparam`: folding equals the unfolded model, trainable set, training, export, refusal of other prompts."""
import pytest
import torch

from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.eval.detector_eval import evaluate_detector
from cl_detect.methods import TaskContext, create_method
from cl_detect.methods.reparam._folded import FoldedContrastiveHead, FoldedMaxSigmoidAttnBlock

from _adapter_fixtures import (TEXT_DIM, VOCABULARY, eval_logits, names_with_grad, prompt_batch, task_dataset,
                               tiny_model, train_config, train_steps)

TASK = TaskContext(0, "colours", VOCABULARY)


def _folded_model(fold_neck=False, parts=("backbone", "neck", "head"), seed=0):
    model = tiny_model([("reparam", {"fold_neck": fold_neck, "parts": list(parts)})], seed=seed)
    model.hook("before_task", TASK)
    return model


def _same(first, second, atol=1e-5):
    # the text encoder gives float32 embeddings, so float64 logits agree to float32 precision
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-6)


@pytest.mark.parametrize("fold_neck", [False, True])
def test_folded_model_gives_the_unfolded_logits(fold_neck):
    model = tiny_model([("reparam", {"fold_neck": fold_neck})]).double()
    images = prompt_batch(seed=2)["images"].double()
    shuffled = ["blue thing", "red thing", "green thing"]
    before = eval_logits(model, images, shuffled)
    model.hook("before_task", TASK)
    heads = model.detector.head.cls_contrasts
    assert all(isinstance(h, FoldedContrastiveHead) for h in heads)
    assert heads[0].conv.weight.shape == (len(VOCABULARY), TEXT_DIM, 1, 1)
    blocks = [m for m in model.detector.neck.modules() if isinstance(m, FoldedMaxSigmoidAttnBlock)]
    assert len(blocks) == (4 if fold_neck else 0)
    _same(before, eval_logits(model, images, shuffled))  # prompt order is honoured too


def test_head_only_folding_keeps_padding_prompts_and_scores_them_never():
    model = tiny_model([("reparam", {})]).double()
    images = prompt_batch(seed=2)["images"].double()
    texts = list(VOCABULARY) + [" "]
    before = eval_logits(model, images, texts)
    model.hook("before_task", TASK)
    after = eval_logits(model, images, texts)
    for level_before, level_after in zip(before[:3], after[:3]):
        torch.testing.assert_close(level_after[:, :3], level_before[:, :3], atol=1e-5, rtol=1e-6)
        assert (level_after[:, 3] == -1e4).all()


@pytest.mark.parametrize("parts,fold_neck", [(("backbone", "neck", "head"), True), (("head",), False)])
def test_exactly_the_chosen_parts_get_gradients(parts, fold_neck):
    model = _folded_model(fold_neck, parts)
    prefixes = tuple(f"detector.{p}." for p in parts)
    expected = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert "detector.head.cls_contrasts.0.conv.weight" in expected
    assert not any("logit_scale" in n or "guide_fc" in n and fold_neck for n in expected)
    assert model.parameter_counts()[0] == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert names_with_grad(model, prompt_batch()) == expected


def test_training_lowers_the_loss():
    model = _folded_model(fold_neck=True)
    # BatchNorm switches to batch statistics (batch of 2), so the loss first rises, then falls below the
    # start; it is noisy step to step (and across CPUs' kernels), so the last three are averaged
    history = train_steps(model, prompt_batch(), steps=15, lr=3e-3)
    assert sum(history[-3:]) / 3 < 0.8 * history[0]


def test_other_prompts_are_refused_clearly(tmp_path):
    model = _folded_model(fold_neck=True)
    with pytest.raises(ValueError, match="cannot score other prompts such as \\['person'\\]"):
        model.embed_texts([["red thing", "person"]])
    other = model.text_encoder(["person", "car"])[None]
    with pytest.raises(ValueError, match="only knows the 3 classes"):
        model.detector(prompt_batch()["images"], other.expand(2, -1, -1))
    dataset = task_dataset(tmp_path / "data")
    stats = evaluate_detector(model.detector, model.text_encoder, dataset, image_size=64, batch_size=4)
    assert 0 <= stats["AP"] <= 1  # its own vocabulary (and the ' ' padding prompt) evaluate normally
    with pytest.raises(ValueError, match="only knows"):
        evaluate_detector(model.detector, model.text_encoder, dataset, image_size=64,
                          prompts=["a", "b", "c"])


def test_export_has_the_official_reparameterised_layout():
    model = _folded_model(fold_neck=True)
    exported = model.method("reparam").export_state_dict()
    assert exported["bbox_head.head_module.cls_contrasts.0.conv.weight"].shape == (3, TEXT_DIM, 1, 1)
    assert exported["bbox_head.head_module.cls_contrasts.2.conv.bias"].shape == (3,)
    block = model.detector.neck.top_down_layers[0].attn_block
    guide = exported["neck.top_down_layers.0.attn_block.guide_convs.0.weight"]
    assert guide.shape == (3, block.head_channels, 1, 1)
    assert len([k for k in exported if k.startswith("neck.top_down_layers.0.attn_block.guide_convs.")]) == \
        block.num_heads
    assert not [k for k in exported if "logit_scale" in k or "guide_fc" in k or ".fold_" in k
                or k.endswith("cls_contrasts.0.bias")]
    assert all(k.startswith(("backbone.image_model.", "neck.", "bbox_head.head_module.")) for k in exported)


def test_state_round_trip_through_torch_save(tmp_path):
    model = _folded_model(fold_neck=True)
    train_steps(model, prompt_batch(), steps=2, lr=1e-3)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = tiny_model([("reparam", {"fold_neck": True})], seed=3)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.method("reparam").vocabulary == list(VOCABULARY)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    images = prompt_batch(seed=6)["images"]
    _same(eval_logits(model, images, list(VOCABULARY)), eval_logits(fresh, images, list(VOCABULARY)), atol=0)


def test_a_later_task_adds_its_classes_as_new_rows():
    model = _folded_model(fold_neck=True)
    train_steps(model, prompt_batch(), steps=1, lr=1e-3)
    head = model.detector.head.cls_contrasts[0]
    trained = head.conv.weight.detach().clone()
    model.hook("before_task", TaskContext(1, "more", ("red thing", "pink thing")))
    assert model.method("reparam").vocabulary == list(VOCABULARY) + ["pink thing"]
    torch.testing.assert_close(head.conv.weight[:3].detach(), trained, atol=0, rtol=0)
    expected = model.text_encoder(["pink thing"])[0] * head.fold_scale
    torch.testing.assert_close(head.conv.weight[3, :, 0, 0].detach(), expected)
    assert head.conv.weight.requires_grad and model.embed_texts([["pink thing", ""]]).shape == (1, 2, TEXT_DIM)


def test_config_and_composition_errors():
    for bad in ({"parts": ["text"]}, {"parts": "head"}, {"fold_neck": "yes"}):
        with pytest.raises(ValueError):
            create_method("reparam", bad)
    with pytest.raises(ValueError, match="reparam cannot be combined with distill: a re-parameterised"):
        tiny_model([("reparam", {}), ("distill", {})])
    with pytest.raises(ValueError, match="list only one"):
        tiny_model([("reparam", {}), ("finetune", {})])
    with pytest.raises(ValueError, match="nothing is folded"):
        tiny_model([("reparam", {})]).method("reparam").export_state_dict()


def test_train_one_task_trains_the_folded_model(tmp_path):
    model = _folded_model(fold_neck=True)
    config = train_config(lr=1e-3)
    dataset, sampler = build_task_training_set(task_dataset(tmp_path / "data"), [], config)
    result = train_one_task(model, dataset, config, tmp_path / "run", sampler=sampler)
    assert result.status == "finished" and result.steps == 2
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    torch.testing.assert_close(saved["detector.head.cls_contrasts.1.conv.weight"],
                               model.detector.head.cls_contrasts[1].conv.weight.detach())


def test_applies_to_only_the_folded_vocabulary():
    from cl_detect.methods.reparam.method import ReparamMethod
    from cl_detect.methods.reparam.config import ReparamConfig
    method = ReparamMethod(ReparamConfig())
    assert method.applies_to(("anything",))  # nothing folded yet: the open-vocabulary model
    method.vocabulary = ["red box", "blue box"]
    assert method.applies_to(("blue box", "red box")) and not method.applies_to(("red box", "person"))


def test_other_prompts_in_training_name_the_mixed_in_data():
    # replay's pretraining_data (other classes) failed at the first step with "evaluate other vocabularies ..."
    model = _folded_model()
    with pytest.raises(ValueError, match="a training batch names them.*replay's pretraining_data"):
        model.train().embed_texts([["red thing", "person"]])
    with pytest.raises(ValueError, match="evaluate other vocabularies"):
        model.eval().embed_texts([["red thing", "person"]])
