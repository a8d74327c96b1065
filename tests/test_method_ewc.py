"""The `ewc` method: penalty and its gradient, Fisher estimation from task data, accumulation, checkpoints."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from _drawn_boxes import write_dataset
from _regulariser_fixtures import perturb, random_batch, tiny_continual, train_steps
from cl_detect.engine.state import load_model_state, model_state
from cl_detect.methods import TaskContext, create_method, list_methods

STRENGTH = 3.0


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ewc_task"), num_images=4)


def _ewc_model(parts: str = "head", **options):
    return tiny_continual([("finetune", {"parts": parts}),
                           ("ewc", {"strength": STRENGTH, "image_size": 64, "fisher_batches": 2, **options})])


def _random_fisher(model, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=generator) for n, p in model.named_parameters() if p.requires_grad}


def test_penalty_zero_at_anchor_and_gradient_is_strength_fisher_delta():
    model = _ewc_model()
    method = model.method("ewc")
    assert method.penalty(model).item() == 0.0  # nothing consolidated yet
    fisher = _random_fisher(model)
    method.consolidate(model, fisher)
    assert method.penalty(model).item() == 0.0
    anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in fisher}
    perturb(model.detector.head)
    penalty = method.penalty(model)
    penalty.backward()
    expected = sum((fisher[n] * (p.detach() - anchor[n]) ** 2).sum() for n, p in model.named_parameters()
                   if n in fisher) * STRENGTH / 2
    torch.testing.assert_close(penalty.detach(), expected)
    for name, param in model.named_parameters():
        if name in fisher:
            torch.testing.assert_close(param.grad, STRENGTH * fisher[name] * (param.detach() - anchor[name]))
        else:
            assert param.grad is None, name


def test_after_task_estimates_fisher_for_trainable_parameters_only(task_data):
    model = _ewc_model().train()
    bn_before = {k: v.clone() for k, v in model.detector.state_dict().items() if "running" in k}
    model.hook("after_task", TaskContext(0, "t0", task_data.vocabulary.names, train_dataset=task_data))
    fisher = model.method("ewc").fisher
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(fisher) == trainable and all(n.startswith("detector.head.") for n in fisher)
    assert all((f >= 0).all() for f in fisher.values()) and any(f.sum() > 0 for f in fisher.values())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.detector.state_dict()[k]) for k, v in bn_before.items())
    assert model(random_batch())["loss_ewc"].item() == 0.0  # at the anchor right after the task


def test_fisher_accumulates_over_tasks_with_decay():
    model = _ewc_model(decay=0.5)
    method = model.method("ewc")
    first, second = _random_fisher(model, 0), _random_fisher(model, 1)
    method.consolidate(model, first)
    perturb(model.detector.head)
    method.consolidate(model, second)
    for name in first:
        torch.testing.assert_close(method.fisher[name], 0.5 * first[name] + second[name])
        assert torch.equal(method.anchor[name], dict(model.named_parameters())[name].detach())
    assert method.tasks_consolidated == 2


def test_training_steps_lower_the_total_loss_with_penalty():
    model = _ewc_model(parts="all")
    model.method("ewc").consolidate(model, _random_fisher(model))
    perturb(model.detector.head, scale=0.02)
    history = train_steps(model, random_batch(), steps=10)
    assert model(random_batch())["loss_ewc"].item() > 0
    assert history[-1] < history[0]


def test_state_round_trips_through_checkpoint_state(task_data):
    model = _ewc_model()
    model.hook("after_task", TaskContext(0, "t0", task_data.vocabulary.names, train_dataset=task_data))
    restored = _ewc_model()
    perturb(restored.detector.head, seed=4)
    load_model_state(restored, model_state(model))
    source, target = model.method("ewc"), restored.method("ewc")
    assert source.fisher.keys() == target.fisher.keys() and target.tasks_consolidated == 1
    assert all(torch.equal(source.fisher[n], target.fisher[n]) for n in source.fisher)
    assert all(torch.equal(source.anchor[n], target.anchor[n]) for n in source.anchor)
    assert target.penalty(restored).item() == 0.0


def test_missing_task_data_and_bad_config_are_rejected():
    model = _ewc_model()
    with pytest.raises(ValueError, match="train_dataset"):
        model.hook("after_task", TaskContext(0, "t0", ("a",)))
    with pytest.raises(ValueError, match="strength"):
        create_method("ewc", {"strength": -1})
    with pytest.raises(ValueError, match="image_size"):
        create_method("ewc", {"image_size": 50})


def test_fisher_images_default_to_the_training_size(task_data, monkeypatch):
    import cl_detect.methods.ewc.method as ewc_method

    sizes = []
    estimate = ewc_method.estimate_fisher
    monkeypatch.setattr(ewc_method, "estimate_fisher", lambda *args: sizes.append(args[4]) or estimate(*args))
    model = tiny_continual([("finetune", {"parts": "head"}), ("ewc", {"fisher_batches": 1})])
    with pytest.raises(ValueError, match="ewc: set its image_size, or pass the training size"):
        model.hook("after_task", TaskContext(0, "t0", task_data.vocabulary.names, train_dataset=task_data))
    model.hook("after_task", TaskContext(0, "t0", task_data.vocabulary.names, train_dataset=task_data, image_size=96))
    _ewc_model().hook("after_task", TaskContext(0, "t0", task_data.vocabulary.names, train_dataset=task_data,
                                                image_size=96))  # an explicit image_size wins
    assert sizes == [96, 64]


@pytest.mark.parametrize("trainer", ["finetune", "lora"])
def test_composes_with_trainers_and_other_regularisers(trainer, task_data):
    if trainer not in list_methods():
        pytest.skip(f"{trainer} is not registered")
    model = tiny_continual([(trainer, {}), ("distill", {}), ("ewc", {"image_size": 64, "fisher_batches": 1}),
                            ("wise", {"alpha": 1.0})])
    model.hook("before_task", TaskContext(0, "t0", ("a",)))
    train_steps(model, random_batch(), steps=1)
    model.hook("after_task", TaskContext(0, "t0", task_data.vocabulary.names, train_dataset=task_data))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(model.method("ewc").fisher) == trainable
    perturb(model.detector, scale=0.01)
    losses = model.train()(random_batch())
    losses["loss"].backward()
    assert losses["loss_ewc"] > 0 and {"loss_distill_cls", "loss_distill_feat"} <= set(losses)



def test_batched_fisher_squares_the_mean_of_per_image_gradients(task_data):
    # the training criterion pools its normaliser and multiplies by the image count, which made a
    # 4-image Fisher batch 4**2 to 4**4 times the averaged gradient squared
    from cl_detect.data.loader import EvalDataset, build_eval_loader
    from cl_detect.methods.ewc._fisher import detection_loss, estimate_fisher

    model = _ewc_model().eval()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    per_image = [torch.autograd.grad(detection_loss(model, batch), [p for _, p in params])
                 for batch in build_eval_loader(EvalDataset(task_data, 64), 1)]
    batched = estimate_fisher(model, task_data, 1, len(task_data), 64)
    for i, (name, _) in enumerate(params):
        mean_gradient = sum(grads[i] for grads in per_image) / len(per_image)
        torch.testing.assert_close(batched[name], mean_gradient.pow(2), rtol=1e-3, atol=1e-12)
    assert sum(f.sum() for f in batched.values()) > 0


@pytest.mark.parametrize("order", [("lora", "ewc"), ("ewc", "lora")])
def test_lora_merge_after_task_is_rejected_at_build(order):
    # merged adapters are re-created under the same names: ewc pulled the fresh adapter towards the old
    # one (loss_ewc ~1e8 at the next task start), or found nothing trainable after the merge
    options = {"lora": {"merge_after_task": True}, "ewc": {"image_size": 64}}
    with pytest.raises(ValueError, match="ewc cannot be combined with lora's merge_after_task"):
        tiny_continual([(name, options[name]) for name in order])
    tiny_continual([("lora", {}), ("ewc", {"image_size": 64})])  # unmerged adapters are fine


@pytest.mark.parametrize("regulariser", ["ewc", "wise"])
def test_any_method_that_renews_its_trained_tensors_is_refused(regulariser):
    # the refusal asks the declared property, not lora by name: any trainer may declare it
    from _regulariser_fixtures import text_encoder
    from cl_detect.methods import ContinualModel
    from cl_detect.models.registry import create_detector
    trainer = create_method("finetune", {"parts": "head"})
    trainer.renews_trained_tensors = "finetune's test setting (set it false)"
    options = {"ewc": {"image_size": 64}, "wise": {}}[regulariser]
    with pytest.raises(ValueError, match=f"{regulariser} cannot be combined with finetune's test setting"):
        ContinualModel(create_detector("yolo_world_v2_t", text_dim=32), text_encoder(),
                       [trainer, create_method(regulariser, options)])


def test_image_size_override_touches_ewc_only_when_it_runs_and_the_used_size_is_recorded(tmp_path):
    import yaml
    from cl_detect.bench.config import load_run_config
    from cl_detect.bench.experiment import with_method_image_sizes, with_overrides
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "base_model": {"checkpoint": "m.pt"}, "train": {"image_size": 96},
                                    "tasks": [{"name": "t", "train": "a.json", "test": "b.json"}]}))
    config = load_run_config(path, defaults_path=None)
    # --image-size with --methods finetune wrote `ewc: {image_size: N}` into the saved config all the same
    assert "ewc" not in with_overrides(config, image_size=320, method_specs=["finetune"]).method_options
    assert with_overrides(config, image_size=320, method_specs=["lora+ewc"]).method_options["ewc"] == {
        "image_size": 320}
    # left unset, ewc's Fisher runs at the training size: the saved config and result JSONs say which
    assert with_method_image_sizes(config, ["finetune+ewc"]).method_options["ewc"]["image_size"] == 96
    assert "ewc" not in with_method_image_sizes(config, ["finetune"]).method_options
    explicit = dataclasses.replace(config, method_options={"ewc": {"image_size": 64}})
    assert with_method_image_sizes(explicit, ["ewc"]).method_options["ewc"]["image_size"] == 64


def test_lora_per_task_adapters_is_rejected_at_build():
    # each task trained a new adapter and no consolidated tensor trained again: loss_ewc was exactly 0
    with pytest.raises(ValueError, match="ewc cannot be combined with lora's per_task_adapters"):
        tiny_continual([("lora", {"per_task_adapters": True}), ("ewc", {"image_size": 64})])
