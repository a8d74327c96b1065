"""The `replay` method: buffer policies, checkpoint round trip, mixing shares, prompts, training."""
from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
import torch

from _mixing_data import fake_records, tiny_model, write_coco_json, write_grounding_json, write_task
from cl_detect.data.readers import read_dataset
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.engine.config import TrainConfig
from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.methods import TaskContext, create_method
from cl_detect.methods.replay import ReplayBuffer

VOCAB_A = ("red square", "blue circle")
VOCAB_B = ("green triangle", "yellow star")
VOCAB_C = ("purple cross",)


def _task(index: int, dataset: DetectionDataset) -> TaskContext:
    return TaskContext(index, f"task{index}", dataset.vocabulary.names, train_dataset=dataset)


def _fake_task(name: str, num_images: int, names: tuple[str, ...] = ("thing",)) -> DetectionDataset:
    return DetectionDataset(fake_records(name, [[0]] * num_images), Vocabulary(names))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay_tasks")
    return (write_task(root, "a", VOCAB_A, 10, seed=0), write_task(root, "b", VOCAB_B, 10, seed=2),
            write_task(root, "c", VOCAB_C, 12, seed=4))


@pytest.fixture(scope="module")
def replay_model(tasks):
    model = tiny_model([create_method("replay", {"capacity": 16, "ratio": 0.25, "seed": 3})])
    for index, dataset in enumerate(tasks[:2]):
        model.hook("after_task", _task(index, dataset))
    return model


def test_reservoir_keeps_exact_capacity_and_uniform_sample():
    per_task = np.zeros(3)
    for seed in range(20):
        buffer = ReplayBuffer(30, "reservoir", seed=seed)
        buffer.add(_fake_task("t0", 10))
        assert len(buffer) == 10  # not full yet: everything is kept
        buffer.add(_fake_task("t0b", 90))
        for name in ("t1", "t2"):
            buffer.add(_fake_task(name, 100))
            assert len(buffer) == 30
        assert buffer.seen == 300
        origin = Counter(e.record.image_path.split("/")[-1].split("_")[0] for e in buffer.entries)
        per_task += [origin["t0"] + origin["t0b"], origin["t1"], origin["t2"]]
    # uniform over all images seen: each block of 100 holds 10 on average (sd of the mean ~0.6)
    np.testing.assert_allclose(per_task / 20, [10, 10, 10], atol=2.0)
    again = ReplayBuffer(30, "reservoir", seed=19)
    for name, count in (("t0", 10), ("t0b", 90), ("t1", 100), ("t2", 100)):
        again.add(_fake_task(name, count))
    assert [e.record.image_path for e in again.entries] == [e.record.image_path for e in buffer.entries]


def test_class_balanced_trims_the_most_frequent_class():
    buffer = ReplayBuffer(30, "class_balanced", seed=0)
    buffer.add(DetectionDataset(fake_records("a", [[0]] * 60), Vocabulary(("apple",))))
    assert buffer.class_counts() == {"apple": 30}
    # task 2: a rare class (6 images, one shared with a common class) and a common one
    labels = [[0]] * 5 + [[0, 1]] + [[1]] * 40
    buffer.add(DetectionDataset(fake_records("b", labels), Vocabulary(("bee", "cat"))))
    counts = buffer.class_counts()
    assert len(buffer) == 30
    assert counts["bee"] == 6  # every image of the rare class survives
    assert abs(counts["apple"] - counts["cat"]) <= 1
    reservoir = ReplayBuffer(30, "reservoir", seed=0)
    reservoir.add(DetectionDataset(fake_records("a", [[0]] * 60), Vocabulary(("apple",))))
    reservoir.add(DetectionDataset(fake_records("b", labels), Vocabulary(("bee", "cat"))))
    assert reservoir.class_counts()["bee"] < 6  # what balancing is for


def test_buffer_round_trips_through_state_dict(replay_model):
    buffer = replay_model.method("replay").buffer
    assert len(buffer) == 16 and buffer.seen == 20
    state = replay_model.state_dict()
    stream = io.BytesIO()
    torch.save(state, stream)
    stream.seek(0)
    loaded = torch.load(stream, weights_only=True)  # the buffer is plain containers
    fresh = tiny_model([create_method("replay", {"capacity": 16, "seed": 3})])
    assert len(fresh.method("replay").buffer) == 0
    fresh.load_state_dict(loaded)
    restored = fresh.method("replay")
    assert restored.buffer.state_dict() == buffer.state_dict()
    assert restored.tasks_added == [0, 1]
    [original], [copy] = buffer.datasets(), restored.buffer.datasets()
    assert copy.vocabulary == original.vocabulary
    for x, y in zip(original.records, copy.records):
        assert x.image_path == y.image_path
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.labels, y.labels)
    # a task offered again (a resumed run) is not added twice
    restored.after_task(fresh, _task(1, DetectionDataset([], Vocabulary(VOCAB_B))))
    assert restored.buffer.seen == 20


def _epoch_items(model, tasks, **changes):
    settings = dict(epochs=1, batch_size=2, image_size=64, num_texts=4, ema=False, device="cpu", mosaic=False)
    config = TrainConfig(**{**settings, **changes})
    current = tasks[2]
    extras = model.method("replay").train_datasets(model, _task(2, current))
    dataset, sampler = build_task_training_set(current, extras, config)
    return dataset, sampler, [dataset[key] for key in sampler.epoch_order(0)]


def test_buffer_takes_the_requested_share_of_draws(replay_model, tasks):
    _, sampler, items = _epoch_items(replay_model, tasks)
    sources = Counter(item["meta"]["dataset_index"] for item in items)
    assert len(items) == round(12 / 0.75) == 16
    assert sources == {0: 12, 1: 4}  # every task image once, a quarter of the draws replayed


def test_replayed_labels_point_at_their_class_names(replay_model, tasks):
    names_of = {r.image_path: {d.vocabulary.names[int(k)] for k in r.labels} for d in tasks[:2] for r in d.records}
    _, _, items = _epoch_items(replay_model, tasks, num_texts=8)
    replayed = [item for item in items if item["meta"]["dataset_index"] == 1]
    prompts = set()
    for item in replayed:
        positives = {item["texts"][int(k)] for k in item["labels"]}
        assert positives and positives <= names_of[item["meta"]["image_path"]]
        prompts |= {t for t in item["texts"] if t}
    # negatives come from the union of earlier vocabularies, not only the image's own task
    assert prompts == set(VOCAB_A + VOCAB_B)


def test_training_with_replay_gives_a_finite_loss(replay_model, tasks, tmp_path):
    dataset, sampler, _ = _epoch_items(replay_model, tasks, mosaic=True)
    config = TrainConfig(epochs=1, batch_size=2, image_size=64, num_texts=4, ema=False, device="cpu")
    result = train_one_task(replay_model, dataset, config, tmp_path, sampler=sampler)
    assert result.status == "finished" and result.steps == 8
    assert math.isfinite(result.last_losses["loss"]) and result.last_losses["loss"] > 0


def test_pretraining_data_is_offered_at_setup(tasks, tmp_path):
    coco = write_coco_json(tasks[0], tmp_path / "pretrain.json")
    model = tiny_model([create_method("replay", {"capacity": 4, "pretraining_data": str(coco),
                                                 "pretraining_format": "coco"})])
    buffer = model.method("replay").buffer
    assert len(buffer) == 4 and buffer.seen == 10
    assert set(buffer.merged_vocabulary().names) <= set(VOCAB_A)


def test_grounding_records_keep_their_phrases_in_a_second_part(tasks, tmp_path):
    grounding = read_dataset(write_grounding_json(tmp_path, num_images=4))
    buffer = ReplayBuffer(20, "reservoir")
    buffer.add(tasks[0])
    buffer.add(grounding)
    copy = ReplayBuffer(1)
    copy.load_state_dict(buffer.state_dict())
    detection, phrased = copy.datasets()
    assert len(detection) == 10 and detection.vocabulary.names == VOCAB_A
    assert len(phrased) == 4 and len(phrased.vocabulary) == 0
    for original, restored in zip(grounding.records, phrased.records):
        assert (restored.caption, restored.phrases, restored.phrase_spans) == \
            (original.caption, original.phrases, original.phrase_spans)
    method = create_method("replay", {"ratio": 0.3})
    method.buffer = copy
    assert [round(r, 6) for _, r in method.train_datasets(None, _task(1, tasks[1]))] == [round(0.3 * 10 / 14, 6),
                                                                                          round(0.3 * 4 / 14, 6)]


@pytest.mark.parametrize("options", [{"ratio": 1.0}, {"ratio": 0.0}, {"capacity": 0}, {"policy": "fifo"},
                                     {"pretraining_format": "coco"}])
def test_impossible_configs_are_rejected(options):
    with pytest.raises(ValueError):
        create_method("replay", options)


def test_ignore_regions_areas_and_lvis_ids_follow_the_buffer():
    # ignore labels used to keep their task-vocabulary index in the merged vocabulary, and a saved buffer
    # dropped areas and the LVIS negative / not-exhaustive ids
    first = DetectionDataset([DetectionRecord("a.jpg", 10, 10, np.array([[0, 0, 4, 4]], np.float32), np.array([0]),
                                              image_id=1)], Vocabulary(("cat",)), source="first")
    second_record = DetectionRecord(
        "b.jpg", 10, 10, np.array([[0, 0, 5, 5]], np.float32), np.array([1]), image_id=2,
        ignore_boxes=np.array([[5, 5, 9, 9], [1, 1, 2, 2]], np.float32), ignore_labels=np.array([0, -1]),
        areas=np.array([20.0]), ignore_areas=np.array([16.0, 1.0]), neg_category_ids=(7,),
        not_exhaustive_category_ids=(3,))
    second = DetectionDataset([second_record], Vocabulary(("dog", "cat")), source="second")
    buffer = ReplayBuffer(capacity=4)
    buffer.add(first)
    buffer.add(second)
    merged = buffer.datasets()[0]
    assert merged.vocabulary.names == ("cat", "dog")
    replayed = merged.records[1]
    assert replayed.labels.tolist() == [0] and replayed.ignore_labels.tolist() == [1, -1]  # "dog" is 1 now
    restored = ReplayBuffer(capacity=1)
    restored.load_state_dict(buffer.state_dict())
    record = restored.entries[1].record
    assert record.areas.tolist() == [20.0] and record.ignore_areas.tolist() == [16.0, 1.0]
    assert (record.neg_category_ids, record.not_exhaustive_category_ids) == ((7,), (3,))
    assert record.ignore_labels.tolist() == [0, -1]
