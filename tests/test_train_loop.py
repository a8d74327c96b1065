"""`train_one_task`: resume equals uninterrupted, and the guards stop bad runs with a clear message."""
import dataclasses
import json
import math

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from cl_detect.data.loader import TrainDataset
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.data.sampling import MixingSampler
from cl_detect.data.transforms import AugmentConfig
from cl_detect.engine.guards import TrainingError
from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.eval.detector_eval import evaluate_detector, run_detector
from cl_detect.methods import ContinualModel, Method, create_method
from cl_detect.models.registry import create_detector

from _compiler import needs_cpp_compiler
from _hash_text import TEXT_DIM, HashTextEncoder
from _tiny_training import base_split, tiny_config, tiny_model, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("tiny"))


def _train(world, out_dir, config, **kwargs):
    model = tiny_model(seed=0)
    dataset, sampler = build_task_training_set(base_split(world), [], config)
    result = train_one_task(model, dataset, config, out_dir, sampler=sampler, **kwargs)
    return model, result


def _metrics(model, world) -> dict:
    stats = evaluate_detector(model.detector, model.text_encoder, base_split(world, "test"), image_size=64,
                              batch_size=8)
    return {k: v for k, v in stats.items() if isinstance(v, float)}


@pytest.mark.parametrize("changes, stop_after", [
    (dict(checkpoint_every_steps=1, ema=False), 3),  # 4 steps per epoch: stops mid-epoch 1
    (dict(checkpoint_every_steps=1, accumulate=2, ema=True), 1),  # 2 steps per epoch, mid-epoch
    (dict(ema=True), 4),  # stops on the last step of epoch 1, before its epoch-end checkpoint
    # workers prefetch past the epoch's end: the checkpoint must keep the epoch the loop is in
    (dict(checkpoint_every_steps=1, ema=False, num_workers=2), 3),
])
def test_resume_equals_uninterrupted(world, tmp_path, changes, stop_after):
    config = tiny_config(**changes)
    model_a, result_a = _train(world, tmp_path / "a", config, resume=False)
    assert result_a.status == "finished"

    _, first = _train(world, tmp_path / "b", config, stop_after_steps=stop_after)
    assert first.status == "interrupted" and first.steps == stop_after
    _, again = _train(world, tmp_path / "b", config, stop_after_steps=stop_after)  # no step beyond the limit
    assert again.status == "interrupted" and again.steps == stop_after
    torch.manual_seed(123)  # a new process: the global RNG must come from the checkpoint
    model_b, result_b = _train(world, tmp_path / "b", config, resume=True)
    assert result_b.status == "finished" and result_b.steps == result_a.steps

    state_a, state_b = model_a.detector.state_dict(), model_b.detector.state_dict()
    assert state_a.keys() == state_b.keys()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    assert _metrics(model_a, world) == _metrics(model_b, world)
    # the interrupted run's log continues where it stopped: every step logged once
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, result_a.steps + 1))


def test_a_training_text_tower_ends_on_its_ema_weights_like_the_detector(world, tmp_path):
    towers = {}
    for ema in (True, False):
        torch.manual_seed(0)
        model = ContinualModel(create_detector("yolo_world_v2_t", text_dim=TEXT_DIM), HashTextEncoder(TEXT_DIM),
                               [create_method("finetune", {"train_text_encoder": True, "text_lr_factor": 1.0})])
        config = tiny_config(epochs=1, ema=ema)
        dataset, sampler = build_task_training_set(base_split(world), [], config)
        train_one_task(model, dataset, config, tmp_path / str(ema), sampler=sampler)
        towers[ema] = model.text_encoder.table.detach().clone()
        if ema:
            saved = torch.load(tmp_path / "True" / "checkpoint.pt", weights_only=False)
            assert torch.equal(saved["ema"]["module"]["text_encoder.table"], towers[ema])
    assert not torch.equal(towers[True], towers[False])  # the tower was averaged, not left on its last step


def test_resuming_with_other_training_settings_is_refused(world, tmp_path):
    config = tiny_config(checkpoint_every_steps=1)
    _, first = _train(world, tmp_path, config, stop_after_steps=1)
    assert first.status == "interrupted"
    # each command's way out: `cl-detect run` has no --no-resume
    with pytest.raises(ValueError, match=r"other training settings \(lr 0.001 -> 0.0005\).*--no-resume.*run --force"):
        _train(world, tmp_path, tiny_config(checkpoint_every_steps=1, lr=config.lr / 2))
    _, resumed = _train(world, tmp_path, tiny_config(checkpoint_every_steps=1, log_every=3))  # watching only
    assert resumed.status == "finished"
    with pytest.raises(ValueError, match=r"epochs 2 -> 3"):  # a finished run is not returned as if it had the new ones
        _train(world, tmp_path, tiny_config(checkpoint_every_steps=1, epochs=3))


def test_training_changes_weights_and_resuming_a_finished_run_is_a_no_op(world, tmp_path):
    config = tiny_config(epochs=1)
    untouched = tiny_model(seed=0).detector.state_dict()
    model, result = _train(world, tmp_path, config)
    assert any(not torch.equal(untouched[k], v) for k, v in model.detector.state_dict().items())
    again_model, again = _train(world, tmp_path, config)
    assert again.status == "finished" and again.steps == result.steps and again.images_per_s == 0.0


class _InjectedLoss(Method):
    """Adds `loss_injected = make(model, call)` to every forward pass (`call` counts from 1)."""

    name = "injected_loss"

    def __init__(self, make):
        super().__init__(None)
        self.make, self.calls = make, 0

    def extra_losses(self, model, batch, output, text):
        self.calls += 1
        return {"loss_injected": self.make(model, self.calls)}


def _nan_from_third_call(model, call):
    return torch.tensor(float("nan") if call > 2 else 0.0)


def _nan_gradient_at_second_call(model, call):
    """A loss of value 0 whose gradient is NaN (sqrt at 0) on the second call."""
    weight = next(model.detector.parameters())
    return torch.sqrt((weight * 0).sum()) if call == 2 else torch.zeros(())


def test_non_finite_loss_names_step_and_batch(world, tmp_path):
    config = tiny_config()
    model = tiny_model(methods=[create_method("finetune"), _InjectedLoss(_nan_from_third_call)])
    dataset, sampler = build_task_training_set(base_split(world), [], config)
    with pytest.raises(TrainingError, match=r"loss is nan at step 2 \(batch image ids tensor\(\[\d+, \d+"):
        train_one_task(model, dataset, config, tmp_path, sampler=sampler)


def test_non_finite_gradient_stops_before_the_step_and_keeps_the_checkpoint_clean(world, tmp_path):
    config = tiny_config(checkpoint_every_steps=1)
    model = tiny_model(methods=[create_method("finetune"), _InjectedLoss(_nan_gradient_at_second_call)])
    dataset, sampler = build_task_training_set(base_split(world), [], config)
    with pytest.raises(TrainingError, match=r"gradient norm is nan at step 1 although the loss is finite"):
        train_one_task(model, dataset, config, tmp_path, sampler=sampler)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    tensors = [*saved["model"].values(), *saved["ema"]["module"].values()]
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    assert all(torch.isfinite(p).all() for p in model.detector.parameters())


class _Relabel(torch.utils.data.Dataset):
    """Wraps a training set and rewrites every item's labels with `relabel(item)`."""

    def __init__(self, dataset, relabel):
        self.dataset, self.relabel = dataset, relabel

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        item = self.dataset[key]
        item["labels"] = self.relabel(item)
        return item

    def set_mosaic(self, enabled):
        self.dataset.set_mosaic(enabled)


@pytest.mark.parametrize("relabel, message", [
    (lambda item: torch.full_like(item["labels"], len(item["texts"])), "outside the 30 prompts"),
    (lambda item: torch.full_like(item["labels"], item["texts"].index("")), "empty padding prompt"),
    # a negative label among valid ones is the one named, not the largest (valid) label
    (lambda item: torch.cat([torch.tensor([-1]), item["labels"][1:]]), r"a box label \(-1\) is outside"),
])
def test_labels_outside_the_prompts_stop_with_the_data_check_hint(world, tmp_path, relabel, message):
    # 25 base classes and 30 prompts per image: every image's prompt list ends in '' padding
    config = tiny_config(num_texts=30)
    dataset, sampler = build_task_training_set(base_split(world), [], config)
    with pytest.raises(TrainingError, match=message) as error:
        train_one_task(tiny_model(), _Relabel(dataset, relabel), config, tmp_path, sampler=sampler)
    assert "cl-detect data check" in str(error.value)


def _unmatchable_boxes_dataset(root) -> DetectionDataset:
    """64-px images whose only box (3 px, at 8.5..11.5) holds no prior centre of stride 8, 16 or 32."""
    records = []
    for index in range(8):
        image = np.full((64, 64, 3), 40 * (index % 5), np.uint8)
        cv2.rectangle(image, (8, 8), (11, 11), (255, 255, 255), -1)
        path = root / f"{index}.png"
        cv2.imwrite(str(path), image)
        records.append(DetectionRecord(str(path), 64, 64, boxes=[[8.5, 8.5, 11.5, 11.5]], labels=[0],
                                       image_id=index + 1))
    return DetectionDataset(records, Vocabulary(("white square",)), source=str(root))


def test_no_positive_assignments_stop_after_patience(tmp_path):
    config = tiny_config(epochs=3, batch_size=2, guard_patience=5, mosaic=False, close_mosaic_epochs=0)
    dataset = TrainDataset(_unmatchable_boxes_dataset(tmp_path), AugmentConfig.no_augmentation(64), num_texts=4)
    with pytest.raises(TrainingError, match=r"no positive assignments .* for 5 steps .*cl-detect data check"):
        train_one_task(tiny_model(), dataset, config, tmp_path / "run", sampler=MixingSampler([len(dataset)]))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows and all(row["num_pos"] == 0 and row["loss_bbox"] == 0.0 for row in rows)
    # with accumulation the patience is still in optimizer steps (it stopped after 5 micro-batches, 2 steps)
    accumulated = dataclasses.replace(config, accumulate=2)
    with pytest.raises(TrainingError, match=r"for 5 steps \(10 batches\) .* \(step 4\)"):
        train_one_task(tiny_model(), dataset, accumulated, tmp_path / "acc", sampler=MixingSampler([len(dataset)]))


def test_focal_classification_loss_is_used_when_configured(world, tmp_path):
    """TrainConfig.cls_loss reaches the criterion: focal gives a different loss than the official BCE."""
    bce_model, bce = _train(world, tmp_path / "bce", tiny_config(epochs=1))
    focal_model, focal = _train(world, tmp_path / "focal", tiny_config(epochs=1, cls_loss="focal", focal_gamma=2.0))
    assert bce_model.criterion.cls_loss == "bce" and focal_model.criterion.cls_loss == "focal"
    assert focal_model.criterion.focal_gamma == 2.0
    assert bce.last_losses["loss_cls"] != focal.last_losses["loss_cls"]


def test_uint8_batches_give_the_float_batch_loss_and_methods_see_float_images(world):
    from cl_detect.data.loader import collate_detection

    dataset = TrainDataset(base_split(world), AugmentConfig(image_size=64), num_texts=4)
    batch = collate_detection([dataset[i] for i in range(3)])
    assert batch["images"].dtype == torch.uint8
    seen = []

    class Spy(Method):
        name = "spy"

        def extra_losses(self, model, batch, output, text):
            seen.append(batch["images"].dtype)
            return {}

    model = tiny_model(methods=[create_method("finetune"), Spy(None)]).eval()
    as_float = dict(batch, images=batch["images"].float() / 255)
    loss_uint8, loss_float = model(batch)["loss"], model(as_float)["loss"]
    assert torch.equal(loss_uint8, loss_float) and seen == [torch.float32, torch.float32]


def _paired_detections(a: dict, b: dict):
    """Row indices pairing two images' detections one to one: same label, nearest score, then nearest box."""
    from scipy.optimize import linear_sum_assignment
    cost = (1e6 * (a["labels"][:, None] != b["labels"][None]) + 1e4 * np.abs(a["scores"][:, None] - b["scores"][None])
            + np.abs(a["boxes"][:, None] - b["boxes"][None]).max(-1))
    return linear_sum_assignment(cost)


@pytest.mark.slow
@needs_cpp_compiler
def test_compiled_evaluation_gives_the_eager_detections_and_statistics(world, tmp_path):
    model, result = _train(world, tmp_path, tiny_config(epochs=2))
    assert result.status == "finished"
    for contrast in model.detector.head.cls_contrasts:  # two tiny epochs leave every score under 0.001:
        contrast.bias.data.zero_()  # spread the scores and let many of them pass; a scale of 20 keeps
        contrast.logit_scale.data.fill_(math.log(20.0))  # them off 1.0, where they would tie exactly
    test_set = base_split(world, "test")
    batch_size = 3 if len(test_set) % 3 else 5  # the last batch is smaller: padded, not compiled again
    assert len(test_set) % batch_size
    embeddings = model.text_encoder(list(test_set.vocabulary.names))
    keep_all = 10**6  # no cut at 300: near-equal scores at the cut would make the two sets differ
    eager = run_detector(model.detector, embeddings, test_set, image_size=64, batch_size=batch_size,
                         max_per_img=keep_all)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = run_detector(model.detector, embeddings, test_set, image_size=64, batch_size=batch_size,
                                max_per_img=keep_all, compile=True)
    # evaluation adds the blank padding prompt: another prompt count, so it compiles once more
    stats = evaluate_detector(model.detector, model.text_encoder, test_set, image_size=64, batch_size=batch_size,
                              compile=True)
    assert [d["image_id"] for d in compiled] == [d["image_id"] for d in eager]
    assert sum(len(d["scores"]) for d in eager) > 0
    # Fused, frozen and compiled code rounds differently: the scale of 20 turns that into score
    # differences up to ~1e-4, and where two near-equal boxes of a label overlap past NMS's IoU
    # 0.7, either may be the one kept, or a box may cross the 0.001 threshold. So detections are
    # paired one to one, and at most 1% of an image's may be such a swap or lack a partner.
    for a, b in zip(eager, compiled):
        allowed = max(1, len(a["scores"]) // 100)
        assert abs(len(a["scores"]) - len(b["scores"])) <= allowed
        eager_rows, compiled_rows = _paired_detections(a, b)
        assert np.array_equal(a["labels"][eager_rows], b["labels"][compiled_rows])
        np.testing.assert_allclose(b["scores"][compiled_rows], a["scores"][eager_rows], rtol=1e-3, atol=1e-5)
        boxes_a, boxes_b = a["boxes"][eager_rows], b["boxes"][compiled_rows]
        same = np.isclose(boxes_b, boxes_a, rtol=1e-4, atol=1e-3).all(1)
        swapped = box_iou(torch.from_numpy(boxes_a[~same]), torch.from_numpy(boxes_b[~same])).diagonal()
        assert (swapped > 0.7).all(), (boxes_a[~same], boxes_b[~same])
        assert (~same).sum() + abs(len(a["scores"]) - len(b["scores"])) <= allowed
    for key, value in _metrics(model, world).items():  # (this barely trained model scores near 0)
        assert stats[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("amp_cpu", [False, True])
def test_amp_cpu_runs_the_cpu_step_under_bf16_autocast_only_when_asked(world, tmp_path, amp_cpu):
    seen = []

    class Spy(Method):
        name = "spy"

        def extra_losses(self, model, batch, output, text):
            seen.append(output.cls_logits[0].dtype)
            return {}

    model = tiny_model(methods=[create_method("finetune"), Spy(None)])
    config = tiny_config(epochs=1, amp=True, amp_cpu=amp_cpu)
    dataset, sampler = build_task_training_set(base_split(world), [], config)
    result = train_one_task(model, dataset, config, tmp_path, sampler=sampler)
    assert result.status == "finished" and math.isfinite(result.last_losses["loss"])
    assert seen and set(seen) == {torch.bfloat16 if amp_cpu else torch.float32}


def test_too_few_images_for_one_accumulated_step_names_both_knobs(world, tmp_path):
    # 16 images, batch_size 4: accumulate 8 is what makes one optimizer step larger than the data
    with pytest.raises(ValueError, match=r"16 training images .*batch_size x accumulate = 4 x 8 = 32 .*"
                                         r"lower accumulate or batch_size"):
        _train(world, tmp_path, tiny_config(accumulate=8))


def test_the_lr_schedule_counts_every_epoch_of_class_balanced_sampling(world, tmp_path):
    from cl_detect.data.loader import TrainDataset
    from cl_detect.data.sampling import RepeatFactorSampler
    from cl_detect.engine.optim import lr_factor
    from cl_detect.engine.task_data import augment_config

    config = tiny_config(epochs=3, ema=False, batch_size=2, warmup_epochs=0, warmup_min_steps=0,
                         final_lr_factor=0.01, mosaic=False, close_mosaic_epochs=0)
    records = base_split(world)
    sampler = RepeatFactorSampler(np.full(len(records), 1.5), seed=0)
    lengths = [len(sampler.epoch_order(epoch)) for epoch in range(3)]
    assert len(set(lengths)) > 1  # epochs of 22, 23 and 27 draws: 11, 11 and 13 steps
    dataset = TrainDataset(records, augment_config(config), num_texts=config.num_texts, seed=config.seed)
    result = train_one_task(tiny_model(seed=0), dataset, config, tmp_path, sampler=sampler)
    assert result.steps == sum(n // 2 for n in lengths)
    logged = [json.loads(line)["lr"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # the schedule spans the steps done: it decays to its final value at the run's end, not before
    expected = [config.lr * lr_factor(step, result.steps, 0, "linear", 0.01) for step in range(result.steps)]
    np.testing.assert_allclose(logged, expected, rtol=1e-12)


def test_training_in_an_out_dir_another_process_trains_in_is_refused(world, tmp_path):
    import fcntl

    with open(tmp_path / ".train.lock", "w") as held:  # what the other process holds while it trains
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with pytest.raises(ValueError, match=r"is in use: another training process \(pid 4242\).*another out_dir"):
            _train(world, tmp_path, tiny_config(epochs=1))
    assert not (tmp_path / "checkpoint.pt").exists()
    _, result = _train(world, tmp_path, tiny_config(epochs=1))  # free once that process ends
    assert result.status == "finished"


def test_without_file_locks_training_goes_on_unguarded(world, tmp_path, monkeypatch):
    # Windows has no fcntl: importing the trainer must not fail there, and the folder is not locked
    from cl_detect.engine import session

    monkeypatch.setattr(session, "fcntl", None)
    _, result = _train(world, tmp_path, tiny_config(epochs=1))
    assert result.status == "finished" and not (tmp_path / ".train.lock").exists()


def test_resuming_with_another_method_list_names_the_checkpoint_and_the_fix(world, tmp_path):
    config = tiny_config(checkpoint_every_steps=1)
    _train(world, tmp_path, config, stop_after_steps=1)
    model = tiny_model(seed=0, methods=[create_method("lora")])
    dataset, sampler = build_task_training_set(base_split(world), [], config)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: checkpoint does not fit this model: .*--no-resume"):
        train_one_task(model, dataset, config, tmp_path, sampler=sampler)
