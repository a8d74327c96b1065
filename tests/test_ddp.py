"""Two CPU processes with gloo: identical weights, rank-0-only outputs, disjoint sampler shards,
evaluation gathered across ranks equal to a single-process evaluation, an accumulated step equal
to one process's, a checkpoint resumed in another number of processes, and `pretrain` returning
only once its model is written."""
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cl_detect.data.records import DetectionDataset
from cl_detect.data.sampling import DrawKey, MixingSampler
from cl_detect.engine.distributed import (
    ShardedSampler, evaluate_distributed, gather_objects, init_distributed, shard_dataset)
from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.eval.detector_eval import evaluate_detector

from _tiny_training import base_split, tiny_config, tiny_model, tiny_world

WORLD_SIZE = 2
# accumulate=2: the first micro-batch of each step runs under no_sync, the second all-reduces
CONFIG = dict(epochs=2, batch_size=4, accumulate=2, ema=True, checkpoint_every_steps=1)


class _Recording(torch.utils.data.Dataset):
    """Remembers every key it is asked for."""

    def __init__(self, dataset):
        self.dataset, self.keys = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        self.keys.append(tuple(key))
        return self.dataset[key]

    def set_mosaic(self, enabled):
        self.dataset.set_mosaic(enabled)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join_group(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert init_distributed("gloo")


def _launch(worker, *args) -> None:
    # fork: the children inherit the imported modules (spawn re-imports torch and cl_detect, ~10x slower)
    mp.start_processes(worker, args=(*args, _free_port()), nprocs=WORLD_SIZE, join=True, start_method="fork")


def _worker(rank: int, root: str, world: str, port: int) -> None:
    _join_group(rank, port)
    try:
        config = tiny_config(**CONFIG)
        model = tiny_model(seed=rank)  # different initial weights: rank 0's must win
        dataset, sampler = build_task_training_set(base_split(world), [], config)
        recording = _Recording(dataset)
        result = train_one_task(model, recording, config, f"{root}/run{rank}", sampler=sampler)
        metrics = evaluate_distributed(model.detector, model.text_encoder, base_split(world, "test"),
                                       image_size=64, batch_size=4)
        test = base_split(world, "test")
        shards = {n: gather_objects([r.image_id for r in shard_dataset(_first(test, n)).records]) for n in (1, 7)}
        torch.save({"detector": model.detector.state_dict(), "keys": recording.keys, "steps": result.steps,
                    "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)}, "shards": shards},
                   f"{root}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    world = tiny_world(root)
    _launch(_worker, str(root), str(world))
    return root, world, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def test_ranks_end_with_identical_weights(ddp_run):
    _, _, ranks = ddp_run
    first, second = ranks[0]["detector"], ranks[1]["detector"]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2  # 16 images / 2 ranks / (4 x 2) = 1 step x 2 epochs
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
    untrained = tiny_model(seed=0).detector.state_dict()
    assert any(not torch.equal(untrained[k], first[k]) for k in first)


def test_only_rank_zero_writes_logs_and_checkpoints(ddp_run):
    root, _, _ = ddp_run
    assert (root / "run0" / "checkpoint.pt").is_file() and (root / "run0" / "log.jsonl").is_file()
    assert len((root / "run0" / "log.jsonl").read_text().splitlines()) == 2
    assert not (root / "run1").exists()


def test_sampler_shards_are_disjoint_and_cover_the_single_process_draws(ddp_run):
    _, world, ranks = ddp_run
    draws = [set(rank["keys"]) for rank in ranks]
    assert draws[0] and not draws[0] & draws[1]
    single = MixingSampler([len(base_split(world))], seed=0)
    expected = {(int(i), epoch, position) for epoch in range(2)
                for position, i in enumerate(single.epoch_order(epoch))}
    assert draws[0] | draws[1] == expected
    assert {position % WORLD_SIZE for _, _, position in draws[1]} == {1}


def _first(dataset: DetectionDataset, count: int) -> DetectionDataset:
    return DetectionDataset(dataset.records[:count], dataset.vocabulary, dataset.source, dataset.image_root)


def test_test_set_shards_cover_every_image_once_when_the_ranks_cannot_split_it_evenly(ddp_run):
    _, world, ranks = ddp_run
    test = base_split(world, "test")
    for count in (1, 7):  # one image: rank 1 detects on an empty shard
        expected = [r.image_id for r in _first(test, count).records]
        assert sorted(ranks[0]["shards"][count]) == sorted(expected) == sorted(ranks[1]["shards"][count])


def test_gathered_evaluation_equals_single_process(ddp_run):
    _, world, ranks = ddp_run
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    model = tiny_model()
    model.detector.load_state_dict(ranks[0]["detector"])
    single = evaluate_detector(model.detector, model.text_encoder, base_split(world, "test"), image_size=64,
                               batch_size=4)
    assert ranks[0]["metrics"] == {k: v for k, v in single.items() if isinstance(v, float)}


def test_sharded_sampler_state_counts_global_draws_and_resumes():
    inner = MixingSampler([10], seed=3)
    shard = ShardedSampler(inner, rank=1, world_size=2)
    keys = list(shard)
    assert [k.position for k in keys] == [1, 3, 5, 7, 9] and shard.epoch == 1
    assert [k.index for k in keys] == list(inner.epoch_order(0)[1::2])
    shard.set_epoch(0)
    iterator = iter(shard)
    next(iterator), next(iterator)
    state = shard.state_dict(num_consumed=2)
    assert state == {"epoch": 0, "position": 4, "seed": 3}
    resumed = ShardedSampler(MixingSampler([10], seed=3), rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert list(resumed) == [DrawKey(int(inner.epoch_order(0)[p]), 0, p) for p in (5, 7, 9)]
    single = MixingSampler([10], seed=3)
    single.load_state_dict(state)  # a 2-rank checkpoint resumes in one process at the same draw
    assert next(iter(single)).position == 4
    with pytest.raises(ValueError, match="cannot split evenly"):
        ShardedSampler(MixingSampler([10], seed=3), rank=0, world_size=2).load_state_dict(
            {"epoch": 0, "position": 3, "seed": 3})


# batch 2, no mosaic: 16 images are 4 steps per epoch in one process, 2 per rank with two
RESUME_CONFIG = dict(epochs=1, batch_size=2, ema=False, mosaic=False, close_mosaic_epochs=0, checkpoint_every_steps=1)


def _train_one_step(rank: int, root: str, world: str, port: int) -> None:
    _join_group(rank, port)
    try:
        config = tiny_config(**RESUME_CONFIG)
        dataset, sampler = build_task_training_set(base_split(world), [], config)
        train_one_task(tiny_model(), dataset, config, f"{root}/run", sampler=sampler, stop_after_steps=1)
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_of_two_ranks_resumes_in_one_process_without_repeating_draws(tmp_path):
    world = tiny_world(tmp_path)
    _launch(_train_one_step, str(tmp_path), str(world))  # each rank drew 2 images: global draws 0..3
    config = tiny_config(**RESUME_CONFIG)
    positions = []
    for stop in (2, 3):  # resume twice: the first resumed run's checkpoint must hold the right position
        dataset, sampler = build_task_training_set(base_split(world), [], config)
        recording = _Recording(dataset)
        train_one_task(tiny_model(), recording, config, tmp_path / "run", sampler=sampler, stop_after_steps=stop)
        positions += [position for _, _, position in recording.keys]
    assert positions == [4, 5, 6, 7]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["sampler"]["position"] == 8 and saved["progress"]["batches_in_epoch"] == 4


def test_resuming_with_a_world_size_that_cannot_continue_in_whole_steps_is_refused(tmp_path, monkeypatch):
    from cl_detect.engine import distributed
    from cl_detect.engine.state import load_trainer_state

    path = tmp_path / "checkpoint.pt"  # one process, batch 2, stopped after one step: 2 draws
    torch.save({"sampler": {"epoch": 0, "position": 2, "seed": 0}, "config": {"batch_size": 2, "accumulate": 1},
                "progress": {"epoch": 0, "step": 1, "batches_in_epoch": 1, "status": "interrupted"}}, path)
    assert load_trainer_state(path)["progress"]["batches_in_epoch"] == 1
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="stopped after 2 draws of epoch 0, which 2 process"):
        load_trainer_state(path)


def _pretrain_and_read_the_model(rank: int, config: dict, port: int) -> None:
    from cl_detect.engine.pretrain import pretrain
    from cl_detect.models import checkpoint

    _join_group(rank, port)
    try:
        write = checkpoint.save_model
        checkpoint.save_model = lambda *args, **kwargs: (time.sleep(1), write(*args, **kwargs))  # a slow disk
        output = pretrain(config)
        assert checkpoint.read_model_file(output)["meta"]["train_steps"] == 2  # every rank can read it now
    finally:
        dist.destroy_process_group()


def test_pretrain_returns_on_every_rank_after_the_model_is_written(tmp_path):
    world = tiny_world(tmp_path)
    config = {"detector": "yolo_world_v2_t", "text_encoder": "minilm-random",
              "datasets": [{"path": str(world / "base" / "train.json"), "check_images": False}],
              "test_sets": [{"name": "base", "path": str(world / "base" / "test.json"), "check_images": False}],
              "train": dict(epochs=1, batch_size=4, image_size=64, num_texts=8, device="cpu", amp=False),
              "output": str(tmp_path / "model.pt"), "out_dir": str(tmp_path / "run")}
    _launch(_pretrain_and_read_the_model, config)  # 16 images / 2 ranks / batch 4: 2 steps


# SGD without clipping: the update is the gradient itself (AdamW's first step is about lr x sign)
STEP_CONFIG = dict(epochs=1, batch_size=4, accumulate=2, ema=False, close_mosaic_epochs=0, warmup_epochs=0,
                   optimizer="sgd", grad_clip=None, lr=0.01)


class _RankMicroBatches(MixingSampler):
    """One process drawing the two ranks' micro-batches in turn: rank 0's first, rank 1's first, ..."""

    def __iter__(self):
        order = self.epoch_order(self.epoch)
        size = STEP_CONFIG["batch_size"]
        for start in range(0, len(order), WORLD_SIZE * size):
            for rank in range(WORLD_SIZE):
                for position in range(start + rank, start + WORLD_SIZE * size, WORLD_SIZE):
                    yield DrawKey(int(order[position]), self.epoch, position)


def _one_accumulated_step(rank: int, root: str, world: str, port: int) -> None:
    _join_group(rank, port)
    try:
        config = tiny_config(**STEP_CONFIG)
        model = tiny_model()
        dataset, sampler = build_task_training_set(base_split(world), [], config)
        train_one_task(model, dataset, config, f"{root}/ddp", sampler=sampler, stop_after_steps=1)
        if rank == 0:
            torch.save(dict(model.detector.named_parameters()), f"{root}/ddp.pt")
    finally:
        dist.destroy_process_group()


def test_an_accumulated_ddp_step_equals_one_process_over_the_same_micro_batches(tmp_path):
    world = tiny_world(tmp_path)
    _launch(_one_accumulated_step, str(tmp_path), str(world))
    config = tiny_config(**{**STEP_CONFIG, "accumulate": WORLD_SIZE * STEP_CONFIG["accumulate"]})
    model = tiny_model()
    model.criterion.world_size = WORLD_SIZE  # the loss scale the ranks use
    dataset, _ = build_task_training_set(base_split(world), [], config)
    sampler = _RankMicroBatches([len(dataset)], seed=config.seed)
    train_one_task(model, dataset, config, tmp_path / "single", sampler=sampler, stop_after_steps=1)
    ranks, single = torch.load(tmp_path / "ddp.pt"), dict(model.detector.named_parameters())
    start = dict(tiny_model().detector.named_parameters())
    assert max((ranks[k] - start[k]).abs().max() for k in start) > 1e-3  # the step moved the weights
    assert max((ranks[k] - single[k]).abs().max() for k in start) < 1e-6
