"""Mixing at ratios, repeat-factor sampling, resumable sampler state, MixedDataset routing."""
import numpy as np
import pytest
import torch

from cl_detect.data.loader import TrainDataset, build_train_loader
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.data.sampling import (DrawKey, MixedDataset, MixingSampler, RepeatFactorSampler,
                                     repeat_factors)
from cl_detect.data.transforms import AugmentConfig

from _drawn_boxes import write_dataset


def _dataset_of(counts):
    return np.searchsorted(np.cumsum([0, 100, 10, 1000])[1:], counts, side="right")


def test_mixing_ratios_hold_and_are_reproducible():
    sizes = [100, 10, 1000]
    sampler = MixingSampler(sizes, ratios=[0.5, 0.3, 0.2], samples_per_epoch=1000, seed=3)
    draws = [key.index for _ in range(5) for key in sampler]
    share = np.bincount(_dataset_of(draws), minlength=3) / len(draws)
    np.testing.assert_allclose(share, [0.5, 0.3, 0.2], atol=1e-3)
    again = MixingSampler(sizes, ratios=[0.5, 0.3, 0.2], samples_per_epoch=1000, seed=3)
    assert [key.index for _ in range(5) for key in again] == draws
    other = MixingSampler(sizes, ratios=[0.5, 0.3, 0.2], samples_per_epoch=1000, seed=4)
    assert [key.index for key in other] != draws[:1000]


def test_mixing_sees_every_image_before_repeating_and_epochs_differ():
    sampler = MixingSampler([7, 5], ratios=[1, 1], samples_per_epoch=20, seed=0)
    first = [key.index for key in sampler]
    small = [i for i in first if i >= 7]
    assert sorted(small[:5]) == [7, 8, 9, 10, 11]  # one full pass over the small set first
    second = [key.index for key in sampler]
    assert first != second and sampler.epoch == 2


def test_default_ratios_are_proportional_to_size():
    sampler = MixingSampler([30, 10], seed=0)
    draws = np.array([key.index for key in sampler])
    assert len(draws) == 40 and sorted(draws.tolist()) == list(range(40))


def test_state_round_trip_resumes_at_the_same_draw():
    sampler = MixingSampler([50, 20], ratios=[0.7, 0.3], samples_per_epoch=60, seed=9)
    next(iter(sampler))  # finish nothing: abandon after one draw
    sampler.set_epoch(1)
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(17)]
    state = sampler.state_dict()
    rest = list(iterator)
    resumed = MixingSampler([50, 20], ratios=[0.7, 0.3], samples_per_epoch=60, seed=9)
    resumed.load_state_dict(state)
    assert state["epoch"] == 1 and state["position"] == 17 and len(resumed) == 43
    assert list(resumed) == rest and head[-1].position == 16
    with pytest.raises(ValueError, match="seed"):
        MixingSampler([50, 20], seed=1).load_state_dict(state)


def test_resumed_loader_yields_the_same_remaining_batches(tmp_path):
    train = TrainDataset(write_dataset(tmp_path, num_images=8), AugmentConfig(image_size=64), num_texts=4)
    loader = build_train_loader(train, batch_size=2, seed=5)
    batches = list(loader)
    state = {"epoch": 0, "position": 4, "seed": 5}  # after two consumed batches of two
    resumed_sampler = MixingSampler([len(train)], seed=5)
    resumed_sampler.load_state_dict(state)
    resumed = list(build_train_loader(train, batch_size=2, sampler=resumed_sampler, seed=5))
    assert len(resumed) == 2
    for a, b in zip(batches[2:], resumed):
        assert torch.equal(a["images"], b["images"]) and a["texts"] == b["texts"]


def _records(label_lists):
    return DetectionDataset([DetectionRecord(f"/x/{i}.jpg", 10, 10, np.ones((len(ls), 4)), ls)
                             for i, ls in enumerate(label_lists)], Vocabulary(("common", "rare")))


def test_repeat_factors_follow_the_lvis_rule():
    dataset = _records([[0]] * 99 + [[0, 1]])
    factors = repeat_factors(dataset, threshold=0.04)
    # f(rare) = 0.01 -> sqrt(0.04 / 0.01) = 2; f(common) = 1 -> 1
    np.testing.assert_allclose(factors, [1.0] * 99 + [2.0])
    sampler = RepeatFactorSampler(factors, seed=0)
    order = [key.index for key in sampler]
    assert len(order) == 101 and order.count(99) == 2


def test_repeat_factor_fraction_is_stochastically_rounded():
    sampler = RepeatFactorSampler(np.array([1.5, 1.0]), seed=0)
    counts = [[key.index for key in sampler].count(0) for _ in range(400)]
    assert set(counts) == {1, 2} and abs(np.mean(counts) - 1.5) < 0.1


def test_mixed_dataset_routes_keys_and_tags_the_source(tmp_path):
    first = TrainDataset(write_dataset(tmp_path, num_images=3), AugmentConfig(image_size=64), num_texts=4)
    second_root = tmp_path / "second"
    second_root.mkdir()
    second = TrainDataset(write_dataset(second_root, num_images=5, seed=1), AugmentConfig(image_size=64),
                          num_texts=4)
    mixed = MixedDataset([first, second])
    assert len(mixed) == 8 and mixed.locate(3) == (1, 0) and mixed.locate(7) == (1, 4)
    item = mixed[DrawKey(4, 0, 11)]
    direct = second[DrawKey(1, 0, 11)]
    assert item["meta"]["dataset_index"] == 1 and torch.equal(item["image"], direct["image"])
    mixed.set_mosaic(False)
    assert not first.mosaic_enabled and not second.mosaic_enabled
    with pytest.raises(IndexError):
        mixed.locate(8)


def test_class_balancing_applies_to_the_task_part_of_a_mix():
    from cl_detect.engine.config import TrainConfig
    from cl_detect.engine.task_data import build_task_training_set

    # f(rare) = 1 / 4000 under the default threshold 0.001 -> the last image has factor 2
    task = _records([[0]] * 3999 + [[0, 1]])
    extra = _records([[0]] * 50)
    config = TrainConfig(image_size=64, device="cpu", class_balanced=True, seed=2)
    dataset, sampler = build_task_training_set(task, [(extra, 0.2)], config)
    for epoch in range(2):
        order = sampler.epoch_order(epoch)
        task_draws = order[order < 4000]
        assert np.bincount(task_draws, minlength=4000).tolist() == [1] * 3999 + [2]
        assert len(order) == round(4001 / 0.8) and len(order) - len(task_draws) == 1000
        assert set(order[order >= 4000].tolist()) == set(range(4000, 4050))
    assert len(dataset) == 4050
    first = sampler.epoch_order(0)
    assert not np.array_equal(first, sampler.epoch_order(1)) and np.array_equal(first, sampler.epoch_order(0))


@pytest.mark.parametrize("size, shares", [(298, (0.03, 0.11)), (47, (0.05, 0.07)), (96, (0.25,))])
def test_every_task_image_is_drawn_exactly_once_per_epoch_beside_mixed_in_data(size, shares):
    from cl_detect.engine.config import TrainConfig
    from cl_detect.engine.task_data import build_task_training_set

    # shares alone gave the task 299 draws of its 298 images (one twice), or 46 of 47 (one left out)
    extras = [(_records([[0]] * 30), share) for share in shares]
    _, sampler = build_task_training_set(_records([[0]] * size), extras, TrainConfig(image_size=64, device="cpu"))
    order = sampler.epoch_order(0)
    assert np.bincount(order[order < size], minlength=size).tolist() == [1] * size
    assert len(order) == round(size / (1 - sum(shares)))


def test_epoch_length_is_the_length_of_the_epoch_order():
    from cl_detect.data.sampling import MixedRepeatFactorSampler
    factors = np.random.default_rng(0).uniform(1, 3, 50)
    samplers = [MixingSampler([7, 30], ratios=[0.3, 0.7], samples_per_epoch=41, seed=1),
                RepeatFactorSampler(factors, seed=2), MixedRepeatFactorSampler(factors, [9, 4], [0.2, 0.1], seed=3)]
    for sampler in samplers:
        lengths = [sampler.epoch_length(epoch) for epoch in range(6)]
        assert lengths == [len(sampler.epoch_order(epoch)) for epoch in range(6)]
    assert len(set(lengths)) > 1  # repeat-factor epochs differ in length
