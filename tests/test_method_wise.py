"""The `wise` method: exact ends of the interpolation, the midpoint, sweeps, name checks, checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from _drawn_boxes import write_dataset
from _regulariser_fixtures import random_batch, tiny_continual, train_steps
from cl_detect.engine.state import load_model_state, model_state
from cl_detect.eval.detector_eval import evaluate_detector
from cl_detect.methods import TaskContext, create_method, list_methods
from cl_detect.methods.wise import interpolate, wise_sweep
from cl_detect.methods.wise.method import snapshot


def _finetuned(alpha: float = 0.5, **options):
    """A wise model, its anchor state, and its state after a few real training steps (BN statistics move too)."""
    model = tiny_continual([("finetune", {}), ("wise", {"alpha": alpha, **options})])
    model.hook("before_task", TaskContext(0, "t0", ("a",)))
    anchor = snapshot(model.detector)
    train_steps(model, random_batch(), steps=2)
    return model, anchor, snapshot(model.detector)


def _equal(state: dict, expected: dict) -> bool:
    return state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


@pytest.mark.parametrize("alpha, end", [(0.0, "anchor"), (1.0, "finetuned")])
def test_alpha_ends_are_exact(alpha, end):
    model, anchor, finetuned = _finetuned(alpha)
    assert not _equal(anchor, finetuned)
    assert any(k.endswith("running_mean") and not torch.equal(anchor[k], finetuned[k]) for k in anchor)
    model.hook("after_task", TaskContext(0, "t0", ("a",)))
    assert _equal(snapshot(model.detector), anchor if end == "anchor" else finetuned)


def test_midpoint_and_integer_buffers():
    model, anchor, finetuned = _finetuned(0.5)
    model.hook("after_task", TaskContext(0, "t0", ("a",)))
    mixed = snapshot(model.detector)
    for key, value in mixed.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (anchor[key] + finetuned[key]) / 2, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(value, finetuned[key]), key  # nearer end at alpha 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_interpolation_keeps_the_precision_of_the_weights(dtype):
    # float64 weights were mixed in float32: alpha 0 was not exactly the anchor, the midpoint off by ~1e-7
    from cl_detect.methods.wise.method import interpolate_states

    generator = torch.Generator().manual_seed(0)
    anchor, finetuned = ({"w": torch.randn(1000, generator=generator, dtype=torch.float64).to(dtype)} for _ in "ab")
    assert torch.equal(interpolate_states(anchor, finetuned, 0.0)["w"], anchor["w"])
    assert torch.equal(interpolate_states(anchor, finetuned, 1.0)["w"], finetuned["w"])
    expected = (anchor["w"].double() + finetuned["w"].double()) / 2
    mixed = interpolate_states(anchor, finetuned, 0.5)["w"]
    assert mixed.dtype == dtype and torch.equal(mixed, expected.to(dtype))


def test_sweep_rows_per_alpha_and_detector_restored():
    model, anchor, finetuned = _finetuned()
    probe = "head.cls_contrasts.0.bias"
    alphas = [0.0, 0.25, 1.0]
    rows = wise_sweep(model, alphas, lambda m: {"bias": m.detector.state_dict()[probe].item()})
    assert [row["alpha"] for row in rows] == alphas
    for row, alpha in zip(rows, alphas):
        expected = (1 - alpha) * anchor[probe] + alpha * finetuned[probe]
        assert row["metrics"]["bias"] == pytest.approx(expected.item(), abs=1e-6)
    assert _equal(snapshot(model.detector), finetuned)


def test_after_task_sweeps_with_real_evaluation_and_applies_fixed_alpha(tmp_path):
    dataset = write_dataset(tmp_path, num_images=2)
    model, anchor, finetuned = _finetuned(alpha=0.0, sweep=[0.0, 1.0])

    def evaluate(m):
        return {"ap": evaluate_detector(m.detector, m.text_encoder, dataset, image_size=64, batch_size=2)["AP"]}

    model.hook("after_task", TaskContext(0, "t0", ("a",), out_dir=tmp_path, extras={"evaluate_fn": evaluate}))
    rows = model.method("wise").sweep_results["t0"]
    assert [r["alpha"] for r in rows] == [0.0, 1.0] and all("ap" in r["metrics"] for r in rows)
    written = json.loads((tmp_path / "wise_sweep.json").read_text())
    assert written["applied_alpha"] == 0.0 and len(written["rows"]) == 2
    assert _equal(snapshot(model.detector), anchor)


def test_previous_task_anchor_follows_the_tasks():
    model, _, finetuned = _finetuned(alpha=0.0, anchor="previous_task")
    model.hook("before_task", TaskContext(1, "t1", ("b",)))  # anchor = weights after task 0
    train_steps(model, random_batch(seed=1), steps=1)
    model.hook("after_task", TaskContext(1, "t1", ("b",)))
    assert _equal(snapshot(model.detector), finetuned)


def test_changed_parameter_names_are_rejected_clearly():
    model, _, _ = _finetuned()
    model.detector.adapter = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="tensor names differ.*lora"):
        interpolate(model, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(model, 1.5)


def test_anchor_round_trips_through_checkpoint_state():
    model, anchor, _ = _finetuned()
    restored = tiny_continual([("finetune", {}), ("wise", {})], seed=5)
    load_model_state(restored, model_state(model))
    assert _equal(restored.method("wise").anchor, anchor)
    interpolate(restored, 0.0)
    assert _equal(snapshot(restored.detector), anchor)


def test_config_validation():
    with pytest.raises(ValueError, match="alpha"):
        create_method("wise", {"alpha": -0.1})
    with pytest.raises(ValueError, match="sweep"):
        create_method("wise", {"sweep": [0.5, 2.0]})
    with pytest.raises(ValueError, match="anchor"):
        create_method("wise", {"anchor": "ema"})
    for sweep in (0.5, ["a"], [True]):  # a TypeError, a bare float() error, True taken as 1.0
        with pytest.raises(ValueError, match="sweep must be a list of coefficients"):
            create_method("wise", {"sweep": sweep})


@pytest.mark.parametrize("trainer", ["finetune", "lora"])
def test_composes_with_trainers_at_alpha_zero(trainer):
    if trainer not in list_methods():
        pytest.skip(f"{trainer} is not registered")
    model = tiny_continual([(trainer, {}), ("distill", {}), ("wise", {"alpha": 0.0})])
    anchor = snapshot(model.detector)
    history = train_steps(model, random_batch(), steps=2)
    assert len(history) == 2 and not _equal(snapshot(model.detector), anchor)
    model.hook("after_task", TaskContext(0, "t0", ("a",)))
    assert _equal(snapshot(model.detector), anchor)


@pytest.mark.parametrize("lora_options, wise_options, order", [
    ({"merge_after_task": True}, {}, ("lora", "wise")),
    ({"per_task_adapters": True}, {}, ("lora", "wise")),
    ({"per_task_adapters": True}, {"anchor": "previous_task"}, ("wise", "lora")),
])
def test_lora_settings_that_rename_tensors_are_rejected_at_build(lora_options, wise_options, order):
    if "lora" not in list_methods():
        pytest.skip("lora is not registered")
    options = {"lora": lora_options, "wise": wise_options}
    with pytest.raises(ValueError, match="merge_after_task|per_task_adapters"):
        tiny_continual([(name, options[name]) for name in order])


def test_per_task_adapters_with_previous_task_anchor_interpolate():
    if "lora" not in list_methods():
        pytest.skip("lora is not registered")
    model = tiny_continual([("lora", {"per_task_adapters": True}), ("wise", {"anchor": "previous_task"})])
    for index in range(2):  # the second task adds adapter task1; the anchor is taken after it
        task = TaskContext(index, f"t{index}", ("a",))
        model.hook("before_task", task)
        model.hook("after_task", task)
    assert model.method("lora").adapters() == ["task0", "task1"]


@pytest.mark.parametrize("trainer", [("finetune", {"train_text_encoder": True, "text_lr_factor": 1.0}),
                                     ("lora", {"parts": ["neck", "head", "text"]})])
def test_alpha_zero_also_restores_a_trained_text_tower(trainer):
    # only the detector was interpolated: alpha 0 kept the fine-tuned text tower (logits off by ~20-75)
    from _adapter_fixtures import VOCABULARY, eval_logits, prompt_batch, tiny_model
    from _adapter_fixtures import train_steps as adapter_train_steps

    if trainer[0] not in list_methods():
        pytest.skip(f"{trainer[0]} is not registered")
    model = tiny_model([trainer, ("wise", {"alpha": 0.0, "sweep": [1.0]})])
    batch, task = prompt_batch(), TaskContext(0, "t0", VOCABULARY, extras={"evaluate_fn": lambda m: {}})
    model.hook("before_task", task)
    assert model.method("wise").text_anchor
    texts = list(VOCABULARY) + [""]
    base = eval_logits(model, batch["images"], texts)
    adapter_train_steps(model, batch, 2)
    trained_text = snapshot(model.text_encoder)
    model.hook("after_task", task)  # the sweep at alpha 1 restores the trained tower, then alpha 0 applies
    assert not _equal(trained_text, snapshot(model.text_encoder))
    assert all(torch.equal(a, b) for a, b in zip(base, eval_logits(model, batch["images"], texts)))
    restored = tiny_model([trainer, ("wise", {})], seed=3)
    load_model_state(restored, model_state(model))
    assert _equal(restored.method("wise").text_anchor, model.method("wise").text_anchor)


def test_a_frozen_text_tower_is_not_copied():
    model = tiny_continual([("finetune", {}), ("wise", {})])
    model.hook("before_task", TaskContext(0, "t0", ("a",)))
    assert model.method("wise").text_anchor == {}
