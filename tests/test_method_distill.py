"""The `distill` method: frozen teacher, zero-at-identity losses, gradients, vocabularies, checkpoints."""
from __future__ import annotations

import pytest
import torch

from _compiler import needs_cpp_compiler
from _drawn_boxes import write_dataset
from _regulariser_fixtures import GENERAL, perturb, random_batch, tiny_continual, train_steps
from cl_detect.engine.state import load_model_state, model_state
from cl_detect.methods import TaskContext, create_method, list_methods
from cl_detect.methods.distill._losses import sample_negatives

DISTILL_KEYS = ("loss_distill_cls", "loss_distill_feat", "loss_distill_dfl")
# threshold 0: every location is "confident", so the DFL term is active on a random tiny detector
EVERYWHERE = {"confidence_threshold": 0.0}


def _distill_model(**options):
    return tiny_continual([("finetune", {}), ("distill", {**EVERYWHERE, **options})])


def _calibrated(model):
    """Zero the contrastive biases (the 5-objects prior makes every probability ~1e-5) and
    re-copy the teacher, so class probabilities, and their KL, are of order one."""
    with torch.no_grad():
        for contrast in model.detector.head.cls_contrasts:
            contrast.bias.zero_()
    model.hook("before_task", TaskContext(0, "t0", ("a",)))
    return model


def test_teacher_frozen_and_stays_in_eval_mode():
    model = _distill_model(vocabulary=GENERAL)
    teacher = model.method("distill").teacher
    model.train()
    assert model.detector.training and not teacher.training
    assert not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    trainable = {name for name, _, _ in model.named_trainable_parameters()}
    assert trainable and not any(name.startswith("methods.") for name in trainable)


@pytest.mark.parametrize("vocabulary", [None, GENERAL])
def test_losses_zero_when_student_equals_teacher_and_positive_after_perturbation(vocabulary):
    # eval: the student's BatchNorm then uses the same (running) statistics as the teacher's
    model = _calibrated(_distill_model(vocabulary=vocabulary)).eval()
    batch = random_batch()
    with torch.no_grad():
        losses = model(batch)
    for key in DISTILL_KEYS:
        assert losses[key].item() == 0.0, key
    perturb(model.detector.head)
    perturb(model.detector.neck, seed=2)
    with torch.no_grad():
        losses = model(batch)
    for key in DISTILL_KEYS:
        assert losses[key].item() > 1e-4, key
    assert torch.isclose(losses["loss"], sum(losses[k] for k in losses if k.startswith("loss_")))


def test_gradients_reach_only_trainable_student_parameters():
    model = tiny_continual([("finetune", {"parts": "head"}), ("distill", {**EVERYWHERE, "vocabulary": GENERAL})])
    perturb(model.detector.head)
    model.train()
    losses = model(random_batch())
    sum(losses[k] for k in DISTILL_KEYS).backward()
    teacher = model.method("distill").teacher
    assert all(p.grad is None for p in teacher.parameters())
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
    head_grads = [p.grad for p in model.detector.head.parameters() if p.grad is not None]
    assert head_grads and any(g.abs().sum() > 0 for g in head_grads)
    assert all(p.grad is None for p in model.detector.backbone.parameters())


def test_training_steps_lower_the_total_loss():
    model = _distill_model(vocabulary=GENERAL)
    history = train_steps(model, random_batch(), steps=10)
    assert history[-1] < history[0]


def test_base_teacher_kept_and_previous_task_teacher_refreshed():
    for policy, refreshed in (("base", False), ("previous_task", True)):
        model = _distill_model(teacher=policy)
        model.hook("before_task", TaskContext(0, "t0", ("a",)))
        perturb(model.detector)
        model.hook("before_task", TaskContext(1, "t1", ("b",)))
        teacher, student = model.method("distill").teacher.state_dict(), model.detector.state_dict()
        same = all(torch.equal(teacher[k], student[k]) for k in student)
        assert same is refreshed, policy


def test_vocabulary_from_file_and_from_retention_set(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(GENERAL) + "\n\n")
    from_file = _distill_model(vocabulary=str(path)).method("distill")
    assert from_file.vocabulary == GENERAL and from_file.vocabulary_embeddings.shape == (len(GENERAL), 32)
    model = _distill_model(vocabulary="coco")
    with pytest.raises(RuntimeError, match="before_task"):
        model(random_batch())
    with pytest.raises(ValueError, match="general_vocabulary"):
        model.hook("before_task", TaskContext(0, "t0", ("a",)))
    with pytest.raises(ValueError, match="retention sets"):
        model.hook("before_task", TaskContext(0, "t0", ("a",), extras={"general_vocabulary": {"lvis": ["x"]}}))
    model.hook("before_task", TaskContext(0, "t0", ("a",), extras={"general_vocabulary": {"coco": GENERAL[:3]}}))
    method = model.method("distill")
    assert method.vocabulary == GENERAL[:3]
    assert torch.allclose(method.vocabulary_embeddings, model.text_encoder(GENERAL[:3]))
    assert "loss_distill_cls" in model(random_batch())


def test_reference_images_join_the_distillation_pass(tmp_path):
    write_dataset(tmp_path, num_images=3)
    model = _distill_model(vocabulary=GENERAL, reference_images=str(tmp_path), reference_per_step=3).eval()
    sizes = []
    model.method("distill").teacher.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    batch = random_batch()
    with torch.no_grad():
        losses = model(batch)
    assert sizes == [len(batch["images"]) + 3]
    assert all(losses[k].item() == 0.0 for k in DISTILL_KEYS)


def test_negative_sampling_and_confident_only_mask():
    confident = torch.zeros(2, 50, dtype=torch.bool)
    confident[0, :5] = True
    negatives = sample_negatives(confident, 7)
    assert negatives.sum(1).tolist() == [7, 7] and not (negatives & confident).any()
    model = _distill_model(vocabulary=GENERAL, cls_confident_only=True, num_negatives=4,
                           confidence_threshold=0.99).eval()
    perturb(model.detector.head)
    with torch.no_grad():
        losses = model(random_batch())
    assert losses["loss_distill_cls"] > 0 and losses["loss_distill_dfl"] == 0  # no confident location


def test_teacher_and_vocabulary_round_trip_through_checkpoint_state():
    model = _distill_model(vocabulary=GENERAL, teacher="previous_task")
    perturb(model.detector)
    model.hook("before_task", TaskContext(1, "t1", ("b",)))  # teacher = perturbed weights
    state = model_state(model)
    assert any(k.startswith("methods.1.teacher.") for k in state)
    restored = tiny_continual([("finetune", {}), ("distill", {**EVERYWHERE, "teacher": "previous_task"})], seed=3)
    load_model_state(restored, state)
    source, target = model.method("distill"), restored.method("distill")
    for key, value in source.teacher.state_dict().items():
        assert torch.equal(value, target.teacher.state_dict()[key]), key
    assert target.vocabulary == GENERAL
    assert torch.equal(target.vocabulary_embeddings, source.vocabulary_embeddings)
    batch = random_batch()
    model.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(model(batch)["loss_distill_cls"], restored(batch)["loss_distill_cls"])


def test_config_validation():
    with pytest.raises(ValueError, match="teacher"):
        create_method("distill", {"teacher": "ema"})
    with pytest.raises(ValueError, match="all distillation weights"):
        create_method("distill", {"cls_weight": 0, "feat_weight": 0, "dfl_weight": 0})
    with pytest.raises(ValueError, match="needs a vocabulary"):
        create_method("distill", {"reference_images": "/tmp"})
    with pytest.raises(ValueError, match="confidence_threshold"):
        create_method("distill", {"confidence_threshold": 1.0})


@pytest.mark.parametrize("trainer", ["finetune", "lora"])
def test_composes_with_trainers(trainer):
    if trainer not in list_methods():
        pytest.skip(f"{trainer} is not registered")
    model = tiny_continual([(trainer, {}), ("distill", {**EVERYWHERE, "vocabulary": GENERAL})])
    losses = model.train()(random_batch())
    losses["loss"].backward()
    assert all(k in losses for k in DISTILL_KEYS)
    assert any(p.grad is not None for _, p, _ in model.named_trainable_parameters())


@pytest.mark.slow
@needs_cpp_compiler
def test_compiled_teacher_gives_the_plain_teachers_losses_also_on_a_smaller_last_batch():
    plain, compiled = (_calibrated(_distill_model(compile_teacher=flag)).train() for flag in (False, True))
    perturb(plain.detector.head)
    perturb(compiled.detector.head)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):  # batch 3 compiles; batch 2 is padded to it
        for batch in (random_batch(3, seed=0), random_batch(2, seed=1)):
            expected, got = plain(batch), compiled(batch)
            for key in DISTILL_KEYS:
                torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6)
    method = compiled.method("distill")
    assert method._compiled_teacher is not None
    compiled.load_state_dict(compiled.state_dict())  # new weights may come in: compile again on next use
    assert method._compiled_teacher is None


@pytest.mark.parametrize("precision, outer, expected", [
    ("auto", False, None), ("auto", True, torch.bfloat16), ("bf16", False, torch.bfloat16),
    ("fp32", True, None)])
def test_teacher_precision_sets_the_teachers_autocast_on_cpu(precision, outer, expected):
    """On a CPU "auto" follows the step (bf16 under TrainConfig.amp_cpu), "bf16" and "fp32" override it."""
    model = _distill_model(teacher_precision=precision).train()
    seen = []
    model.method("distill").teacher.register_forward_pre_hook(
        lambda *_: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer):
        model(random_batch())
    assert seen == [expected]


def test_teacher_precision_autocasts_to_bf16_on_cuda_unless_fp32(monkeypatch):
    from contextlib import nullcontext

    from cl_detect.methods.distill.method import teacher_autocast
    with pytest.raises(ValueError, match="teacher_precision"):
        create_method("distill", {"teacher_precision": "fp16"})
    calls = []  # this machine may have no CUDA, where torch.autocast("cuda") switches itself off
    monkeypatch.setattr(torch, "autocast", lambda device, dtype=None, enabled=True: calls.append(
        (device, dtype, enabled)) or nullcontext())
    for precision in ("auto", "bf16", "fp32"):
        teacher_autocast(precision, torch.device("cuda"))
    assert calls == [("cuda", torch.bfloat16, True), ("cuda", torch.bfloat16, True), ("cuda", None, False)]


def test_bf16_teacher_gives_float32_losses_close_to_the_float32_teachers():
    models = {p: _calibrated(_distill_model(vocabulary=GENERAL, teacher_precision=p)).eval() for p in ("fp32", "bf16")}
    for model in models.values():
        perturb(model.detector.head)
    batch = random_batch()
    with torch.no_grad():
        exact, rounded = (models[p](batch) for p in ("fp32", "bf16"))
    assert any(not torch.equal(rounded[key], exact[key]) for key in DISTILL_KEYS)  # bf16 rounding shows
    for key in DISTILL_KEYS:
        assert rounded[key].dtype == torch.float32, key
        torch.testing.assert_close(rounded[key], exact[key], rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("methods", [
    [("distill", {}), ("lora", {"rank": 2})],  # the teacher took the adapters at task 0, a fresh one has none
    [("lora", {"rank": 2, "per_task_adapters": True}), ("distill", {"teacher": "previous_task"})],
    [("specialist", {}), ("distill", {"teacher": "previous_task"})],  # the teacher took the closed-set heads
])
def test_a_teacher_copied_after_the_trainer_changed_the_layout_resumes(methods):
    # resuming these runs failed with "checkpoint does not fit this model" (the runner then started over)
    if not {name for name, _ in methods} <= set(list_methods()):
        pytest.skip("method not registered")
    model = tiny_continual(methods)
    for index in range(2):
        model.hook("before_task", TaskContext(index, f"t{index}", ("red square", "blue circle")))
    perturb(model.detector)
    restored = tiny_continual(methods, seed=3)
    load_model_state(restored, model_state(model))
    expected, got = model.state_dict(), restored.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected if isinstance(expected[k], torch.Tensor))
    assert not any(p.requires_grad for p in restored.method("distill").teacher.parameters())


def test_a_teacher_older_than_the_detector_layout_says_which_order_resumes():
    methods = [("lora", {"rank": 2, "per_task_adapters": True}), ("distill", {})]
    if "lora" not in list_methods():
        pytest.skip("lora is not registered")
    model = tiny_continual(methods)
    for index in range(2):
        model.hook("before_task", TaskContext(index, f"t{index}", ("red square",)))
    with pytest.raises(ValueError, match="teacher 'base' list distill before the trainer"):
        load_model_state(tiny_continual(methods, seed=3), model_state(model))


@pytest.mark.parametrize("order, teacher, allowed", [
    (("distill", "specialist"), "base", True), (("specialist", "distill"), "previous_task", True),
    (("specialist", "distill"), "base", False), (("distill", "specialist"), "previous_task", False)])
def test_specialist_orders_whose_teacher_cannot_score_the_task_classes_are_refused(order, teacher, allowed):
    # the refused orders built, and their teacher scored the second task's class -30 (absent) everywhere,
    # so loss_distill_cls pulled the student's scores of that class towards "never"
    from cl_detect.methods.distill._losses import flatten_levels

    if "specialist" not in list_methods():
        pytest.skip("specialist is not registered")
    methods = [(name, {"teacher": teacher} if name == "distill" else {}) for name in order]
    if not allowed:
        fix = "distill before specialist" if teacher == "base" else "specialist before distill"
        with pytest.raises(ValueError, match=f"list {fix}"):
            tiny_continual(methods)
        return
    model = tiny_continual(methods)
    for index, vocabulary in enumerate([("red square", "blue circle"), ("green triangle",)]):
        model.hook("before_task", TaskContext(index, f"t{index}", vocabulary))
    batch = random_batch()
    with torch.no_grad():
        text = model.eval().embed_texts([["green triangle", ""]] * 2)
        logits = flatten_levels(model.method("distill").teacher(batch["images"], text).cls_logits)
    assert logits[..., 0].max() > -29


@pytest.mark.parametrize("vocabulary", [None, GENERAL])
def test_a_training_text_tower_is_distilled_against_a_frozen_copy(vocabulary):
    # the teacher used the student's own (training) text embeddings, or the base ones for both: a text
    # tower that drifted alone gave distillation losses of exactly 0
    from _adapter_fixtures import VOCABULARY, prompt_batch, tiny_model

    methods = [("finetune", {"train_text_encoder": True}), ("distill", {**EVERYWHERE, "vocabulary": vocabulary})]
    model = tiny_model(methods)
    model.hook("before_task", TaskContext(0, "t0", VOCABULARY))
    distill, batch = model.method("distill"), prompt_batch()
    assert distill.teacher_text is not None and not any(p.requires_grad for p in distill.teacher_text.parameters())
    assert model.parameter_counts() == tiny_model([methods[0]]).parameter_counts()
    with torch.no_grad():
        at_identity = model.eval()(batch)
        assert all(at_identity[key].abs() < 1e-4 for key in DISTILL_KEYS)
        perturb(model.text_encoder, scale=0.5)
        drifted = model(batch)
    assert all(drifted[key] > 1e-3 for key in DISTILL_KEYS)
    model.train()
    torch.stack([model(batch)[key] for key in DISTILL_KEYS]).sum().backward()
    assert any(p.grad is not None and p.grad.any() for p in model.text_encoder.parameters())
    restored = tiny_model(methods, seed=3)
    load_model_state(restored, model_state(model))
    assert all(torch.equal(a, b) for a, b in zip(restored.method("distill").teacher_text.state_dict().values(),
                                                 distill.teacher_text.state_dict().values()))


@pytest.mark.parametrize("first", ["distill", "lora"])
def test_the_text_teacher_copy_does_not_depend_on_the_order_of_the_hooks(first):
    # listed first, distill asked before lora had added its per-task text adapter: no copy, so the teacher
    # saw the student's drifting text
    from _adapter_fixtures import VOCABULARY, tiny_model

    lora = ("lora", {"parts": ["neck", "head", "text"], "per_task_adapters": True})
    model = tiny_model([("distill", {}), lora] if first == "distill" else [lora, ("distill", {})])
    model.hook("before_task", TaskContext(0, "t0", VOCABULARY))
    assert model.method("distill").teacher_text is not None


def test_a_frozen_text_tower_gets_no_teacher_copy():
    model = _calibrated(_distill_model())
    assert model.method("distill").teacher_text is None
