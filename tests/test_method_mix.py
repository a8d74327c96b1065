"""The `mix` method: grounding phrases as prompts, detection sources, subsets, shares, training."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from _mixing_data import tiny_model, write_coco_json, write_grounding_json, write_task
from cl_detect.data.readers import read_dataset
from cl_detect.engine.config import TrainConfig
from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.methods import TaskContext, create_method

TASK_VOCAB = ("purple cross", "grey ring")
GENERAL_VOCAB = ("red square", "blue circle", "green triangle")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix_data")
    task = write_task(root, "task", TASK_VOCAB, 12, seed=4)
    general = write_coco_json(write_task(root, "general", GENERAL_VOCAB, 10, seed=0), root / "general.json")
    return {"task": task, "grounding": write_grounding_json(root, num_images=8), "general": general}


def _context(index: int, data) -> TaskContext:
    return TaskContext(index, f"task{index}", TASK_VOCAB, train_dataset=data["task"])


def _config(**changes) -> TrainConfig:
    settings = dict(epochs=1, batch_size=2, image_size=64, num_texts=4, ema=False, device="cpu", mosaic=False)
    return TrainConfig(**{**settings, **changes})


def _epoch(model, data, config: TrainConfig, task_index: int = 0):
    extras = []
    for method in model.methods:
        extras += method.train_datasets(model, _context(task_index, data))
    dataset, sampler = build_task_training_set(data["task"], extras, config)
    return dataset, sampler, [dataset[key] for key in sampler.epoch_order(0)]


def test_grounding_records_are_prompted_with_their_own_phrases(data):
    mix = create_method("mix", {"data": [{"path": str(data["grounding"]), "format": "grounding", "ratio": 0.25}]})
    model = tiny_model([mix])
    phrases_of = {r.image_path: set(r.phrases) for r in read_dataset(data["grounding"]).records}
    _, _, items = _epoch(model, data, _config(num_texts=6))
    sources = Counter(item["meta"]["dataset_index"] for item in items)
    assert sources == {0: 12, 1: 4}
    for item in items:
        texts = [t for t in item["texts"] if t]
        if item["meta"]["dataset_index"] == 0:
            assert set(texts) <= set(TASK_VOCAB)
            continue
        own = phrases_of[item["meta"]["image_path"]]
        # positives and negatives are all this image's phrases; the rest of the 6 prompts is '' padding
        assert set(texts) == own and item["texts"].count("") == 6 - len(own)
        assert {item["texts"][int(k)] for k in item["labels"]} <= own and len(item["labels"])


def test_detection_sources_use_their_own_vocabulary(data):
    mix = create_method("mix", {"data": [{"path": str(data["general"]), "ratio": 0.2},
                                         {"path": str(data["grounding"]), "ratio": 0.2}]})
    _, _, items = _epoch(tiny_model([mix]), data, _config(num_texts=8))
    sources = Counter(item["meta"]["dataset_index"] for item in items)
    assert sources == {0: 12, 1: 4, 2: 4}  # 12 task images are 60% of 20 draws
    general = [item for item in items if item["meta"]["dataset_index"] == 1]
    for item in general:
        assert {t for t in item["texts"] if t} == set(GENERAL_VOCAB)  # all 3 names fit in 8 prompts
        assert all(item["texts"][int(k)] in GENERAL_VOCAB for k in item["labels"])


def test_max_images_draws_a_seeded_subset_per_task(data):
    options = {"data": [{"path": str(data["grounding"]), "ratio": 0.25, "max_images": 3}], "seed": 1}
    mix = create_method("mix", options)
    first, second = mix.subset(0, task_index=0), mix.subset(0, task_index=1)
    assert len(first) == len(second) == 3
    paths = [[r.image_path for r in d.records] for d in (first, second, create_method("mix", options).subset(0, 0))]
    assert paths[0] == paths[2]  # same seed and task: same images
    assert paths[0] != paths[1]  # a new task sees other images
    [(dataset, ratio)] = mix.train_datasets(None, _context(0, data))
    assert len(dataset) == 3 and ratio == pytest.approx(0.25)


def test_mix_with_replay_shares_the_epoch(data):
    methods = [create_method("mix", {"data": [{"path": str(data["grounding"]), "ratio": 0.2}]}),
               create_method("replay", {"capacity": 8, "ratio": 0.2})]
    model = tiny_model(methods)
    model.hook("after_task", TaskContext(0, "general", GENERAL_VOCAB,
                                         train_dataset=read_dataset(data["general"])))
    _, _, items = _epoch(model, data, _config(), task_index=1)
    assert Counter(item["meta"]["dataset_index"] for item in items) == {0: 12, 1: 4, 2: 4}


def test_mix_and_replay_shares_summing_to_one_are_rejected_at_build(data):
    # replay adds data only from the second task on: the sum must be checked before the first
    methods = [create_method("mix", {"data": [{"path": str(data["grounding"]), "ratio": 0.5}]}),
               create_method("replay", {"capacity": 8, "ratio": 0.6})]
    with pytest.raises(ValueError, match=r"mix 0\.50 \+ replay 0\.60 = 1\.10"):
        tiny_model(methods)


def test_training_with_grounding_mix_gives_a_finite_loss(data, tmp_path):
    mix = create_method("mix", {"data": [{"path": str(data["grounding"]), "format": "grounding", "ratio": 0.25}]})
    model = tiny_model([mix])
    dataset, sampler, _ = _epoch(model, data, _config(mosaic=True))
    result = train_one_task(model, dataset, _config(mosaic=True), tmp_path, sampler=sampler)
    assert result.status == "finished" and result.steps == 8
    assert math.isfinite(result.last_losses["loss"]) and result.last_losses["loss"] > 0


def test_real_captions_from_tiny_coco(shared_data, tmp_path):
    from _data_builders import tiny_coco_images, write_grounding_json as write_coco_grounding

    path = write_coco_grounding(shared_data, tmp_path / "tiny_coco_grounding.json")
    mix = create_method("mix", {"data": [{"path": str(path), "format": "grounding", "ratio": 0.5,
                                          "max_images": 4, "image_root": str(tiny_coco_images(shared_data))}]})
    [(dataset, _)] = mix.train_datasets(None, TaskContext(0, "t", TASK_VOCAB))
    assert len(dataset) == 4 and all(r.is_grounding for r in dataset.records)
    dataset, sampler = build_task_training_set(dataset, [], _config(num_texts=8))
    item = dataset[next(iter(sampler))]
    record = next(r for r in mix.subset(0, 0).records if r.image_path == item["meta"]["image_path"])
    assert {t for t in item["texts"] if t} <= set(record.phrases)


@pytest.mark.parametrize("options", [
    {"data": []},
    {"data": [{"path": "x.json", "ratio": 0.6}, {"path": "y.json", "ratio": 0.5}]},
    {"data": [{"path": "x.json", "ratio": 0.2, "weight": 2}]},
    {"data": [{"path": "x.json", "format": "tfrecord"}]},
    {"data": [{"path": "x.json", "max_images": 0}]},
    # these failed as bare TypeErrors (quoted numbers) or read the string letter by letter
    {"data": [{"path": "x.json", "ratio": "0.2"}]},
    {"data": [{"path": "x.json", "max_images": "10"}]},
    {"data": [{"path": "x.json", "ratio": None}]},
    {"data": "x.json"},
])
def test_impossible_configs_are_rejected(options):
    with pytest.raises(ValueError):
        create_method("mix", options)
