"""Ctrl-C during `train_one_task`: the step under way is finished and checkpointed, and the run
resumed from it equals the uninterrupted one; a second Ctrl-C stops at once."""
import multiprocessing
import os
import signal
import threading

import pytest
import torch

from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.methods import Method, create_method

from _tiny_training import base_split, tiny_config, tiny_model, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("tiny"))


class _CtrlC(Method):
    """Sends SIGINT as a terminal's Ctrl-C does (to this process and its DataLoader workers)
    during forward pass number `at_forward` (counted from 1), `times` times."""

    name = "ctrl_c"

    def __init__(self, at_forward: int | None, times: int = 1):
        super().__init__(None)
        self.at_forward, self.times, self.forwards = at_forward, times, 0

    def extra_losses(self, model, batch, output, text):
        self.forwards += 1
        if self.forwards == self.at_forward:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGINT)
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)
        return {}


def _train(world, out_dir, config, at_forward=None, times=1):
    model = tiny_model(seed=0, methods=[create_method("finetune"), _CtrlC(at_forward, times)])
    dataset, sampler = build_task_training_set(base_split(world), [], config)
    return model, train_one_task(model, dataset, config, out_dir, sampler=sampler)


@pytest.mark.parametrize("changes, at_forward, saved_step", [
    (dict(ema=True), 3, 3),  # 4 steps per epoch: checkpointed mid-epoch, at the step of the Ctrl-C
    (dict(accumulate=2, ema=False), 3, 2),  # first micro-batch of step 2: the step is finished first
    # the workers got the Ctrl-C too, and must still load the step's second micro-batch
    (dict(accumulate=2, ema=False, num_workers=2), 3, 2),
])
def test_ctrl_c_checkpoints_the_step_under_way_and_the_resumed_run_equals_the_uninterrupted(
        world, tmp_path, changes, at_forward, saved_step):
    config = tiny_config(**changes)
    model_a, result_a = _train(world, tmp_path / "a", config)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _train(world, tmp_path / "b", config, at_forward=at_forward)
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["progress"]
    assert (saved["step"], saved["status"]) == (saved_step, "interrupted")

    torch.manual_seed(123)  # a new process: the global RNG must come from the checkpoint
    model_b, result_b = _train(world, tmp_path / "b", config)
    assert result_b.status == "finished" and result_b.steps == result_a.steps
    state_a, state_b = model_a.detector.state_dict(), model_b.detector.state_dict()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, f"resumed run differs in {different[:5]}"


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(world, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(world, tmp_path, tiny_config(ema=False), at_forward=2, times=2)
    assert not (tmp_path / "checkpoint.pt").exists()  # stopped inside step 2, before any save


def test_training_in_another_thread_leaves_the_sigint_handler_alone(world, tmp_path):
    handler, outcome = signal.getsignal(signal.SIGINT), {}

    def train():
        outcome["result"] = _train(world, tmp_path, tiny_config(epochs=1, ema=False))[1]

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    assert outcome["result"].status == "finished" and signal.getsignal(signal.SIGINT) is handler


def test_loader_workers_ignore_ctrl_c_whatever_their_start_method():
    # under forkserver (Python 3.14's default on Linux) a worker inherits no Python handler: it must
    # set its own, or the terminal's Ctrl-C kills it before the step under way has its micro-batches
    from cl_detect.data.loader import seed_worker

    handler = signal.getsignal(signal.SIGINT)
    try:
        seed_worker(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, handler)
