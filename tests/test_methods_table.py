"""One table over every registered method and a few compositions (the timm/peft pattern):
a new method is tested by being registered (plus, if it needs them, options below).

For each case, on a tiny detector and 64-px images: training steps lower the loss,
exactly the parameters marked trainable receive gradients, the whole state
round-trips through `state_dict()`, and frozen teachers stay frozen in eval mode.
"""
from __future__ import annotations

import copy

import pytest
import torch

from cl_detect.data.loader import collate_detection
from cl_detect.engine.config import TrainConfig
from cl_detect.engine.task_data import build_task_training_set
from cl_detect.methods import ContinualModel, TaskContext, create_method, list_methods
from cl_detect.models.registry import create_detector

from _mixing_data import TEXT_DIM, text_encoder, write_grounding_json, write_task

COMPOSITIONS = [("lora", "distill"), ("finetune", "replay"), ("finetune", "distill", "replay"), ("prompt", "replay")]
CASES = [(name,) for name in list_methods()] + [c for c in COMPOSITIONS if set(c) <= set(list_methods())]


def _options(name: str, root) -> dict:
    if name == "mix":
        return {"data": [{"path": str(write_grounding_json(root)), "format": "grounding", "ratio": 0.25}]}
    return {}


def _build(names: tuple[str, ...], root, detector_state: dict | None = None):
    torch.manual_seed(0)
    task = write_task(root, "task", ("red box", "blue box"), 8)
    detector = create_detector("yolo_world_v2_t", text_dim=TEXT_DIM)
    if detector_state is not None:
        detector.load_state_dict(detector_state)
    model = ContinualModel(detector, text_encoder(), [create_method(n, _options(n, root)) for n in names])
    context = TaskContext(index=0, name="task", vocabulary=task.vocabulary.names, train_dataset=task,
                          out_dir=root / "out")
    model.hook("before_task", context)
    extras = [pair for method in model.methods for pair in method.train_datasets(model, context)]
    config = TrainConfig(epochs=1, batch_size=4, image_size=64, num_texts=4, ema=False, mosaic=False,
                         device="cpu")
    dataset, sampler = build_task_training_set(task, extras, config)
    keys = list(iter(sampler))[:4]
    return model, collate_detection([dataset[k] for k in keys])


class FrozenAssignment:
    """Wraps an assigner: the first call's result is returned on every later call."""

    def __init__(self, assigner):
        self.assigner, self.result = assigner, None

    def __call__(self, *args, **kwargs):
        if self.result is None:
            self.result = self.assigner(*args, **kwargs)
        return self.result


@pytest.fixture(scope="module")
def warm_detector(tmp_path_factory):
    """A detector fine-tuned briefly on the tiny task: from a random init the TAL targets
    (which scale with IoU) are ~0 and the loss first rises, so methods start from here."""
    model, batch = _build(("finetune",), tmp_path_factory.mktemp("warm"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(120):
        model(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return copy.deepcopy(model.detector.state_dict())


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("names", CASES, ids=["+".join(c) for c in CASES])
def test_method_trains_the_intended_parameters_and_round_trips(names, tmp_path, warm_detector):
    model, batch = _build(names, tmp_path, warm_detector)
    model.train()
    trainable = _trainable(model)
    count, total = model.parameter_counts()
    assert count == sum(p.numel() for n, p in model.named_parameters() if n in trainable) and count < total
    if any(m.skips_training for m in model.methods):
        assert count == 0
        return
    assert count > 0

    losses = model(batch)
    assert torch.isfinite(losses["loss"]) and set(losses) >= {"loss", "loss_cls", "loss_bbox", "loss_dfl"}
    losses["loss"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable, (sorted(with_grad - trainable)[:5], sorted(trainable - with_grad)[:5])
    model.zero_grad(set_to_none=True)

    # TAL targets move with the predictions, so the raw loss is not a fixed objective:
    # hold this batch's assignment fixed; normalised gradient steps must then lower it
    # (a fresh Adam's first sign-like steps of full size can overshoot on a tiny net)
    assigner = model.criterion.assigner
    model.criterion.assigner = FrozenAssignment(assigner)
    params = [p for p in model.parameters() if p.requires_grad]
    first = None
    for _ in range(3):
        loss = model(batch)["loss"]
        first = float(loss.detach()) if first is None else first
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        norm = sum(float(g.pow(2).sum()) for g in grads if g is not None) ** 0.5
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p -= 1e-3 * g / norm
    assert float(model(batch)["loss"].detach()) < first
    model.criterion.assigner = assigner

    for method in model.methods:  # frozen teachers stay frozen and in eval mode
        teacher = getattr(method, "teacher", None)
        if isinstance(teacher, torch.nn.Module):
            assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    state = copy.deepcopy(model.state_dict())
    fresh, _ = _build(names, tmp_path, warm_detector)
    fresh.load_state_dict(state)
    model.eval(), fresh.eval()
    with torch.no_grad():
        a, b = model(batch), fresh(batch)
    for key in ("loss_cls", "loss_bbox", "loss_dfl"):
        torch.testing.assert_close(a[key], b[key])


def test_two_trainers_are_rejected_with_the_reason():
    trainers = [n for n in ("lora", "prompt", "finetune") if n in list_methods()]
    if len(trainers) < 2:
        pytest.skip("needs two trainer methods")
    with pytest.raises(ValueError, match="decide which parameters train"):
        ContinualModel(create_detector("yolo_world_v2_t", text_dim=TEXT_DIM), text_encoder(),
                       [create_method(trainers[0]), create_method(trainers[1])])


@pytest.mark.parametrize("names, reason", [
    (("prompt", "ewc"), "anchors each parameter by its name"),  # class rows rebuilt per task vocabulary
    (("reparam", "ewc"), "anchors each parameter by its name"),
    (("prompt", "distill"), "freezes the detector"),  # every distill loss would be exactly 0
    (("prompt", "wise"), "freezes the detector"),  # nothing for wise to interpolate
])
def test_compositions_that_cannot_work_are_rejected_with_the_reason(names, reason):
    if not set(names) <= set(list_methods()):
        pytest.skip(f"needs {names}")
    with pytest.raises(ValueError, match=f"cannot be combined with .*{reason}"):
        ContinualModel(create_detector("yolo_world_v2_t", text_dim=TEXT_DIM), text_encoder(),
                       [create_method(n) for n in names])


def test_regulariser_alone_implies_full_finetuning():
    if "replay" not in list_methods():
        pytest.skip("replay not registered")
    model = ContinualModel(create_detector("yolo_world_v2_t", text_dim=TEXT_DIM), text_encoder(),
                           [create_method("replay")])
    assert [m.name for m in model.methods] == ["finetune", "replay"]
    assert all(p.requires_grad for p in model.detector.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())


def test_unknown_method_and_option_errors():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        create_method("nope")
    with pytest.raises(ValueError, match="unknown option"):
        create_method("finetune", {"not_a_field": 1})
    with pytest.raises(ValueError, match="parts must be one of"):
        create_method("finetune", {"parts": "legs"})
