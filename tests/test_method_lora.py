"""`lora`: targets, exact trainable set, training, merge, adapter files, per-task adapters, state round trip."""
import pytest
import torch
from torch import nn

from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.methods import TaskContext, create_method
from cl_detect.models.official import official_state_dict

from _adapter_fixtures import (VOCABULARY, eval_logits, names_with_grad, prompt_batch, task_dataset, tiny_model,
                               train_config, train_steps)


def _expected_adapter_size(model, prefixes, rank):
    """r x (fan-in of lora_A) + out x r per conv/linear layer under `prefixes`."""
    total = 0
    for name, module in model.named_modules():
        if name.startswith(prefixes) and isinstance(module, nn.Conv2d) and ".lora_" not in name \
                and not name.endswith("base_layer"):
            total += rank * module.in_channels * module.kernel_size[0] * module.kernel_size[1] \
                + module.out_channels * rank
        elif name.startswith(prefixes) and isinstance(module, nn.Linear) and ".lora_" not in name \
                and not name.endswith("base_layer"):
            total += rank * module.in_features + module.out_features * rank
    return total


def _randomise_adapters(model, seed=3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.005 * torch.randn(param.shape, generator=generator))


def _same(first, second, atol=1e-5):
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_default_targets_neck_and_head_and_only_adapters_get_gradients():
    plain = tiny_model([("finetune", {})])
    expected = _expected_adapter_size(plain, ("detector.neck.", "detector.head."), rank=4)
    model = tiny_model([("lora", {"rank": 4})])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n and n.startswith(("detector.neck.", "detector.head.")) for n in trainable)
    assert model.parameter_counts()[0] == expected
    # one lora_A per adapted layer: every conv and linear layer of the neck and head
    layers = {n.split(".lora_A.")[0] for n in trainable if ".lora_A." in n}
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for n, m in plain.named_modules()
                              if n.startswith(("detector.neck.", "detector.head.")))
    assert names_with_grad(model, prompt_batch()) == trainable


def test_training_lowers_the_loss_and_leaves_base_weights_alone():
    model = tiny_model([("lora", {"rank": 4})])
    # BatchNorm statistics included: frozen BatchNorm layers stay in eval mode
    base = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k and torch.is_tensor(v)}
    history = train_steps(model, prompt_batch(), steps=8)
    assert history[-1] < history[0]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())


def test_merge_gives_the_unmerged_outputs_and_the_plain_layout():
    model = tiny_model([("lora", {"rank": 4, "layer_types": ["conv", "linear"]})])
    _randomise_adapters(model)
    images = prompt_batch()["images"].double()
    model.double()  # exact comparison: float32 rounding alone reaches ~1e-4 through the network
    unmerged = eval_logits(model, images, list(VOCABULARY))
    plain_outputs = eval_logits(tiny_model([("finetune", {})]).double(), images, list(VOCABULARY))
    assert (unmerged[0] - plain_outputs[0]).abs().max() > 1e-3  # the adapters do change the outputs
    model.method("lora").merge()
    _same(unmerged, eval_logits(model, images, list(VOCABULARY)))
    assert not any(".lora_" in k or "base_layer" in k for k in model.state_dict())
    assert "neck.top_down_layers.0.attn_block.guide_fc.weight" in official_state_dict(model.detector)
    assert model.parameter_counts()[0] == 0


def test_state_round_trip_through_torch_save(tmp_path):
    model = tiny_model([("lora", {"rank": 4})])
    train_steps(model, prompt_batch(), steps=2)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = tiny_model([("lora", {"rank": 4})], seed=5)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    images = prompt_batch(seed=1)["images"]
    _same(eval_logits(model, images, list(VOCABULARY)), eval_logits(fresh, images, list(VOCABULARY)), atol=0)


def test_adapter_files_hold_only_adapters_and_load_into_a_fresh_model(tmp_path):
    model = tiny_model([("lora", {"rank": 4})])
    _randomise_adapters(model)
    method = model.method("lora")
    images = prompt_batch()["images"]
    reference = eval_logits(model, images, list(VOCABULARY))
    for path in (tmp_path / "adapters.safetensors", tmp_path / "adapters.pt"):
        method.save_adapters(path)
        assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left behind
        fresh = tiny_model([("lora", {"rank": 4, "per_task_adapters": True})])
        assert fresh.method("lora").adapters() == []
        assert fresh.method("lora").load_adapters(path) == ["default"]
        _same(reference, eval_logits(fresh, images, list(VOCABULARY)), atol=0)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "adapters.safetensors"), framework="pt") as handle:
        assert all(".lora_" in k for k in handle.keys())
    with pytest.raises(ValueError, match="rank 4"):
        tiny_model([("lora", {"rank": 2})]).method("lora").load_adapters(tmp_path / "adapters.pt")
    # the update is scaled by alpha / rank: another alpha loaded silently and gave logits off by ~100s
    for path in (tmp_path / "adapters.safetensors", tmp_path / "adapters.pt"):
        with pytest.raises(ValueError, match=f"{path.name} holds adapters trained with alpha 16.0.*alpha=16.0"):
            tiny_model([("lora", {"rank": 4, "alpha": 8.0})]).method("lora").load_adapters(path)


def test_per_task_adapters_train_one_at_a_time_and_survive_a_checkpoint(tmp_path):
    options = {"rank": 2, "per_task_adapters": True}
    model = tiny_model([("lora", options)])
    method = model.method("lora")
    assert model.parameter_counts()[0] == 0  # nothing trains before the first task
    for index in range(2):
        model.hook("before_task", TaskContext(index, f"t{index}", VOCABULARY, out_dir=tmp_path))
        train_steps(model, prompt_batch(), steps=1)
        model.hook("after_task", TaskContext(index, f"t{index}", VOCABULARY, out_dir=tmp_path))
    assert method.adapters() == ["task0", "task1"] and method.active_adapter == "task1"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".task1." in n for n in trainable)
    assert names_with_grad(model, prompt_batch()) == trainable
    fresh = tiny_model([("lora", options)], seed=9)
    fresh.load_state_dict(model.state_dict())
    assert fresh.method("lora").adapters() == ["task0", "task1"] and fresh.method("lora").active_adapter == "task1"
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == trainable
    images = prompt_batch(seed=2)["images"]
    _same(eval_logits(model, images, list(VOCABULARY)), eval_logits(fresh, images, list(VOCABULARY)), atol=0)


def test_switching_adapters_refreshes_cached_text_embeddings():
    # the text caches key on weight versions; switching adapters writes no weight, so evaluation
    # (no_grad, cached) kept using the previously active adapter's text embeddings
    model = tiny_model([("lora", {"rank": 2, "parts": ["text"], "per_task_adapters": True})]).eval()
    method, texts = model.method("lora"), [list(VOCABULARY)]
    model.hook("before_task", TaskContext(0, "t0", VOCABULARY))
    _randomise_adapters(model)
    with torch.no_grad():
        task0 = model.embed_texts(texts)
        model.hook("before_task", TaskContext(1, "t1", VOCABULARY))
        task1 = model.embed_texts(texts)
        method.set_active_adapter("task0")
        again = model.embed_texts(texts)
    assert not torch.allclose(task0, task1)
    torch.testing.assert_close(again, task0, atol=0, rtol=0)


def test_fold_into_detector_keeps_the_outputs_with_inactive_per_task_adapters():
    # every adapter used to be merged, inactive ones too: the saved detector was base + all deltas,
    # a model that never ran (only the active adapter is applied in forward)
    model = tiny_model([("lora", {"rank": 2, "per_task_adapters": True})])
    for index in range(2):
        model.hook("before_task", TaskContext(index, f"t{index}", VOCABULARY))
        _randomise_adapters(model, seed=index)
    model.double()
    images = prompt_batch()["images"].double()
    before = eval_logits(model, images, list(VOCABULARY))
    model.hook("fold_into_detector")
    assert model.method("lora").adapters() == [] and model.method("lora").active_adapter is None
    _same(before, eval_logits(model, images, list(VOCABULARY)))


def test_merge_after_task_writes_the_adapter_then_folds_it(tmp_path):
    model = tiny_model([("lora", {"rank": 2, "per_task_adapters": True, "merge_after_task": True})])
    task = TaskContext(0, "t0", VOCABULARY, out_dir=tmp_path)
    model.hook("before_task", task)
    _randomise_adapters(model)
    model.double()
    images = prompt_batch()["images"].double()
    before = eval_logits(model, images, list(VOCABULARY))
    model.hook("after_task", task)
    assert (tmp_path / "lora_task0.safetensors").is_file()
    assert model.method("lora").adapters() == []
    _same(before, eval_logits(model, images, list(VOCABULARY)))
    model.hook("before_task", TaskContext(1, "t1", VOCABULARY))
    assert model.method("lora").adapters() == ["task1"] and model.parameter_counts()[0] > 0


def test_text_tower_and_name_patterns_pick_exactly_their_layers():
    text_only = tiny_model([("lora", {"rank": 4, "parts": ["text"], "layer_types": ["linear"]})])
    trainable = {n for n, p in text_only.named_parameters() if p.requires_grad}
    assert trainable == {"text_encoder.proj.lora_A.default.weight", "text_encoder.proj.lora_B.default.weight"}
    assert text_only.parameter_counts()[0] == 4 * 32 + 32 * 4
    assert names_with_grad(text_only, prompt_batch()) == trainable
    picked = tiny_model([("lora", {"rank": 4, "parts": ["head"], "include": [r"cls_preds\.\d\.2$"]})])
    layers = {n.split(".lora_")[0] for n, p in picked.named_parameters() if p.requires_grad}
    assert layers == {f"detector.head.cls_preds.{i}.2" for i in range(3)}
    with pytest.raises(ValueError, match="no conv layer"):
        tiny_model([("lora", {"parts": ["head"], "layer_types": ["conv"], "include": ["nothing_here"]})])


def test_config_and_composition_errors():
    for bad in ({"rank": 0}, {"parts": ["wings"]}, {"dropout": 1.0}, {"include": ["("]}, {"parts": "head"},
                {"include": [3]}, {"exclude": [None]}):  # the last two failed as TypeErrors in re
        with pytest.raises(ValueError):
            create_method("lora", bad)
    with pytest.raises(ValueError, match="list only one"):
        tiny_model([("lora", {}), ("finetune", {})])


def test_train_one_task_checkpoints_the_adapters(tmp_path):
    model = tiny_model([("lora", {"rank": 4})])
    config = train_config()
    dataset, sampler = build_task_training_set(task_dataset(tmp_path / "data"), [], config)
    result = train_one_task(model, dataset, config, tmp_path / "run", sampler=sampler)
    assert result.status == "finished" and result.steps == 2
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    lora_keys = [k for k in saved if ".lora_" in k]
    assert lora_keys and all(torch.equal(saved[k], model.state_dict()[k]) for k in lora_keys)


def test_grouped_convs_of_a_timm_backbone_are_not_targeted_and_merge_is_exact():
    # peft refused depthwise convs at build ("rank divisible by groups") or could not merge into them
    pytest.importorskip("timm")
    from cl_detect.methods import ContinualModel
    from cl_detect.models.registry import create_detector

    from _hash_text import TEXT_DIM, HashTextEncoder

    torch.manual_seed(0)
    detector = create_detector("yolo_world_v2_t", text_dim=TEXT_DIM, backbone="timm:mobilenetv3_small_050")
    grouped = [n for n, m in detector.backbone.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped
    model = ContinualModel(detector, HashTextEncoder(buckets=97, seed=11, projection=True),
                           [create_method("lora", {"parts": ["backbone"], "rank": 8})])
    adapted = {k.split(".lora_A.")[0] for k in model.method("lora").adapter_state_dict() if ".lora_A." in k}
    assert adapted and not adapted & {f"detector.backbone.{n}" for n in grouped}
    _randomise_adapters(model)
    images = prompt_batch()["images"]
    reference = eval_logits(model, images, list(VOCABULARY))
    model.method("lora").merge()
    _same(reference, eval_logits(model, images, list(VOCABULARY)), atol=1e-4)
