"""Two CPU processes with gloo: identical weights, rank-0-only outputs, disjoint sampler shards,
and evaluation gathered across ranks equal to a single-process evaluation."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cl_detect.data.sampling import DrawKey, MixingSampler
from cl_detect.engine.distributed import ShardedSampler, evaluate_distributed, init_distributed
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


def _worker(rank: int, root: str, world: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert init_distributed("gloo")
    try:
        config = tiny_config(**CONFIG)
        model = tiny_model(seed=rank)  # different initial weights: rank 0's must win
        dataset, sampler = build_task_training_set(base_split(world), [], config)
        recording = _Recording(dataset)
        result = train_one_task(model, recording, config, f"{root}/run{rank}", sampler=sampler)
        metrics = evaluate_distributed(model.detector, model.text_encoder, base_split(world, "test"),
                                       image_size=64, batch_size=4)
        torch.save({"detector": model.detector.state_dict(), "keys": recording.keys, "steps": result.steps,
                    "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)}},
                   f"{root}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    world = tiny_world(root)
    # fork: the children inherit the imported modules (spawn re-imports torch and cl_detect, ~10x slower)
    mp.start_processes(_worker, args=(str(root), str(world), _free_port()), nprocs=WORLD_SIZE, join=True,
                       start_method="fork")
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
