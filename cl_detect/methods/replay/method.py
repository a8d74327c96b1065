"""`replay`: rehearse earlier tasks by mixing buffered images into later tasks.

Two hooks do the work (../shared/STYLE.md): `train_datasets` hands the buffer
to the task's data mixing sampler at `ratio` of the draws before a task, and
`after_task` offers the task's images to the buffer. The buffer travels in
`model.state_dict()` through `get_extra_state`, so checkpoints carry it.
"""
from __future__ import annotations

import logging

from cl_detect.data.readers import read_dataset
from cl_detect.data.records import DetectionDataset
from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.replay.buffer import ReplayBuffer
from cl_detect.methods.replay.config import ReplayConfig

log = logging.getLogger(__name__)


class ReplayMethod(Method):
    """Owns a `ReplayBuffer`; adds no loss and trains no parameter of its own.

    Args:
        config: capacity, policy, ratio, seed and optional pretraining data.
    """

    def __init__(self, config: ReplayConfig):
        super().__init__(config)
        self.buffer = ReplayBuffer(config.capacity, config.policy, config.seed)
        self.tasks_added: list[int] = []  # a task offered twice (a resumed run) is not added twice
        self.pretraining_added = False

    def setup(self, model: ContinualModel) -> None:
        if self.config.pretraining_data is not None and not self.pretraining_added:
            root = self.config.pretraining_image_root
            pretraining = read_dataset(self.config.pretraining_data, format=self.config.pretraining_format,
                                       **({"image_root": root} if root is not None else {}))
            self.buffer.add(pretraining)
            self.pretraining_added = True
            log.info("replay: offered %d pretraining images, buffer holds %d", len(pretraining), len(self.buffer))

    def data_share(self) -> float:
        return self.config.ratio  # from the second task on (the first when pretraining data is buffered)

    def train_datasets(self, model: ContinualModel, task: TaskContext) -> list[tuple[DetectionDataset, float]]:
        """The buffer's parts, sharing `ratio` of the draws in proportion to their sizes."""
        parts = self.buffer.datasets()
        total = sum(len(part) for part in parts)
        return [(part, self.config.ratio * len(part) / total) for part in parts]

    def after_task(self, model: ContinualModel, task: TaskContext) -> None:
        if task.index in self.tasks_added:
            return
        self.buffer.add(task.train_dataset)
        self.tasks_added.append(task.index)
        log.info("replay: after task %s the buffer holds %d images (%d seen)", task.name, len(self.buffer),
                 self.buffer.seen)

    def get_extra_state(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "tasks_added": list(self.tasks_added),
                "pretraining_added": self.pretraining_added}

    def set_extra_state(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.tasks_added = list(state["tasks_added"])
        self.pretraining_added = state["pretraining_added"]
