"""Multi-GPU (or multi-process CPU) training through torchrun.

    torchrun --nproc_per_node 8 -m cl_detect.cli pretrain experiments/pretrain/coco_base.yaml

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT) and joins the process group (NCCL on CUDA, gloo on CPU);
`train_one_task` notices an initialised group by itself and then
- shards its resumable sampler with `ShardedSampler`: rank r takes draws
  r, r + W, r + 2W, ... of each epoch's single-process order, so the ranks are
  disjoint and together see the same draws, with the same augmentation keys, as
  one process; the saved position counts global draws, so a checkpoint written
  by W ranks resumes in any number of processes P at the same place when the
  position is whole optimizer steps of P x batch_size x accumulate draws
  (`engine/state.py` refuses it otherwise); the total batch and the steps per
  epoch are then P's, and the LR schedule goes on from the step count reached
  over P's total steps (the LR jumps when P differs from W);
- wraps the model in `DistributedDataParallel` for the forward pass;
- passes the world size to `YOLOWorldLoss` (the official num_imgs x world_size scale);
- logs and writes checkpoints on rank 0 only (every rank reads them when resuming;
  the restored RNG state is rank 0's, which only matters for code that draws from
  the global generators).
The weights are not those of one process with batch W x batch_size: the loss
normaliser (sum of assigned scores) and BatchNorm's batch statistics are per
rank, as in the official DDP training; the gradients equal one process's over
the same micro-batches with the loss scaled for W ranks (tests/test_ddp.py).
`evaluate_distributed` runs each rank on its slice of a test set and scores the
detections gathered with `all_gather_object`.
A rank that stops with an error (a guard's `TrainingError`, an unreadable image)
exits, and torchrun ends the others at once (under gloo their collective fails
first with "Connection closed by peer"); torchrun's report names the failing
rank as the "Root Cause": its traceback is the one to read.
`cl-detect run` refuses to start under torchrun (see commands/run.py).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from cl_detect.data.records import DetectionDataset
from cl_detect.data.sampling import DrawKey


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: "nccl" or "gloo"; None picks NCCL when CUDA is available.

    Returns:
        True when running under torchrun with more than one process (the group
        is then initialised and, on CUDA, this process uses GPU LOCAL_RANK).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return is_distributed()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class ShardedSampler(Sampler):
    """One rank's share of a resumable sampler's epochs (`MixingSampler`, `RepeatFactorSampler`).

    Each epoch's order is cut to a multiple of the world size (at most W - 1
    draws dropped, as `DistributedSampler(drop_last=True)` does) and rank r
    takes positions r, r + W, ...; keys keep their global position, so an
    item is augmented exactly as in a single-process run.

    Args:
        sampler: the single-process sampler (its epoch orders are used, not its position).
        rank: this process's rank.
        world_size: number of ranks W.
    """

    def __init__(self, sampler, rank: int, world_size: int):
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size
        self.seed = sampler.seed
        self.epoch = 0
        self.position = 0  # local draws consumed in this epoch

    def _usable(self, order: np.ndarray) -> int:
        return len(order) // self.world_size * self.world_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's indices of `epoch`, in the order they are drawn."""
        order = self.sampler.epoch_order(epoch)
        return order[self.rank:self._usable(order):self.world_size]

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return len(self.epoch_order(self.epoch)) - self.position

    def __iter__(self) -> Iterator[DrawKey]:
        order = self.sampler.epoch_order(self.epoch)
        local_count = self._usable(order) // self.world_size
        while self.position < local_count:
            position = self.position * self.world_size + self.rank
            self.position += 1
            yield DrawKey(int(order[position]), self.epoch, position)
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self, num_consumed: int | None = None, epoch: int | None = None) -> dict:
        """The single-process sampler's state: epoch and *global* draws consumed (arguments as
        `MixingSampler.state_dict`, with `num_consumed` counting this rank's draws)."""
        local = self.position if num_consumed is None else num_consumed
        return {"epoch": self.epoch if epoch is None else epoch, "position": local * self.world_size,
                "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        if int(state["position"]) % self.world_size:
            raise ValueError(f"the checkpoint stopped after {state['position']} draws of epoch {state['epoch']}, "
                             f"which {self.world_size} ranks cannot split evenly; resume with a world size "
                             f"that divides it")
        self.epoch, self.position = int(state["epoch"]), int(state["position"]) // self.world_size


def shard_sampler(sampler):
    """`ShardedSampler` over `sampler` when distributed, else `sampler` itself."""
    if not is_distributed() or isinstance(sampler, ShardedSampler):
        return sampler
    return ShardedSampler(sampler, rank(), world_size())


def broadcast_model(model: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (before optimizer and EMA copy them)."""
    if is_distributed():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


class DataParallelForward:
    """The model's forward under `DistributedDataParallel` (or the model itself in one process).

    DDP registers the parameters that require grad when it is built, so the
    wrapper is rebuilt whenever that set changes (progressive unfreezing).
    BatchNorm statistics are not broadcast from rank 0 at every forward (that
    would drop the other ranks' micro-batches); `sync_buffers()` averages them
    over the ranks after each optimizer step instead, so the ranks (and their
    EMA copies) stay identical.

    Args:
        model: the `ContinualModel`.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._wrapped, self._signature = None, None

    def __call__(self, batch: dict) -> dict:
        if not is_distributed():
            return self.model(batch)
        signature = tuple(p.requires_grad for p in self.model.parameters())
        if signature != self._signature:
            device = next(self.model.detector.parameters()).device
            device_ids = [device.index] if device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(self.model, device_ids=device_ids, broadcast_buffers=False)
            self._signature = signature
        return self._wrapped(batch)

    def sync_buffers(self) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the ranks."""
        if not is_distributed():
            return
        for buffer in self.model.buffers():
            if buffer.dtype.is_floating_point:
                dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
                buffer.data.div_(world_size())

    def no_sync(self):
        """Skip the gradient all-reduce (accumulation micro-batches before the last)."""
        return self._wrapped.no_sync() if is_distributed() and self._wrapped is not None else nullcontext()


def gather_objects(local: list) -> list:
    """Concatenate a list from every rank (rank order); the list itself in one process."""
    if not is_distributed():
        return list(local)
    parts = [None] * world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]


def shard_dataset(dataset: DetectionDataset) -> DetectionDataset:
    """This rank's records r, r + W, ... (all of them in one process)."""
    return DetectionDataset(dataset.records[rank()::world_size()], dataset.vocabulary, dataset.source,
                            dataset.image_root)


def evaluate_distributed(detector, text_encoder, dataset: DetectionDataset, image_size: int = 640,
                         batch_size: int = 16, num_workers: int = 0) -> dict:
    """COCO-style evaluation with the test images split across ranks.

    Every rank detects on its shard; detections are gathered to all ranks and
    scored there, so every rank returns the same statistics as a single
    process running `evaluate_detector(..., protocol="coco")`.

    Args:
        detector, text_encoder: the model (the same weights on every rank).
        dataset: the full test set.
        image_size, batch_size, num_workers: inference settings.
    """
    from cl_detect.eval.coco_eval import evaluate_coco
    from cl_detect.eval.detector_eval import PADDING_PROMPT, drop_label, ground_truth, run_detector

    names = list(dataset.vocabulary.names)
    with torch.no_grad():
        embeddings = text_encoder(names + [PADDING_PROMPT])
    local = drop_label(run_detector(detector, embeddings, shard_dataset(dataset), image_size, batch_size,
                                    num_workers), len(names))
    position = {record.image_id: i for i, record in enumerate(dataset.records)}
    detections = sorted(gather_objects(local), key=lambda item: position[item["image_id"]])
    gt, vocabulary = ground_truth(dataset)
    return evaluate_coco(gt, detections, max_dets=100, backend="fast", vocabulary=vocabulary)
