"""`cl-detect run --jobs N` run processes die with the process that started them (no orphans)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from cl_detect.bench.experiment import start_worker

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                               initargs=(1,))
    print(pool.submit(os.getpid).result(), flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(line for line in status.read_text().splitlines() if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only")
def test_run_workers_exit_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        os.kill(parent.pid, signal.SIGKILL)  # a scheduler's kill: no chance to clean up
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), f"run process {worker} outlived its killed parent"
    finally:
        parent.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="run processes get their own group on Linux")
def test_sigint_to_the_parent_alone_checkpoints_the_runs_and_starts_no_other(tmp_path):
    # `kill -INT <parent>` used to wait for the running runs to finish, and then ran the queued ones
    import glob

    import torch
    import yaml

    from cl_detect.data.synthetic import write_synthetic_world
    from cl_detect.models.checkpoint import save_model
    from cl_detect.models.registry import create_detector

    write_synthetic_world(tmp_path / "world", seed=0, image_size=64, num_base_train=4, num_test=6,
                          num_task_train=8, num_tasks=2)
    torch.manual_seed(0)
    save_model(tmp_path / "base.pt", create_detector("yolo_world_v2_t", text_dim=384), "minilm")
    config = {
        "name": "tiny", "data_root": str(tmp_path / "world"), "base_model": {"checkpoint": str(tmp_path / "base.pt")},
        "tasks": [{"name": f"task{i}", "train": f"task{i}/train.json", "test": f"task{i}/test.json"} for i in (1, 2)],
        "retention": [{"name": "base", "data": "retention/test.json"}],
        "eval": {"image_size": 64, "batch_size": 8},
        "train": {"epochs": 30, "batch_size": 4, "image_size": 64, "num_texts": 8, "device": "cpu", "amp": False,
                  "num_workers": 0, "mosaic": False, "close_mosaic_epochs": 0, "log_every": 1},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "res"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    parent = subprocess.Popen(
        [sys.executable, "-m", "cl_detect.cli", "run", str(tmp_path / "tiny.yaml"), "--methods", "finetune",
         "--seeds", "0", "1", "2", "--jobs", "2", "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while len(glob.glob(f"{out}/tiny/work/*/task1_task1/log.jsonl")) < 2 and time.monotonic() < deadline:
            assert parent.poll() is None, "the run ended before both runs trained"
            time.sleep(0.5)
        os.kill(parent.pid, signal.SIGINT)
        assert parent.wait(timeout=120) == 130
    finally:
        parent.kill()
    saved = [torch.load(p, weights_only=False)["progress"]["status"]
             for p in glob.glob(f"{out}/tiny/work/*/task1_task1/checkpoint.pt")]
    assert saved == ["interrupted", "interrupted"]  # each run checkpointed the step under way
    assert not (out / "tiny" / "work" / "finetune_seed2").exists()  # the queued run never started
    assert not glob.glob(f"{out}/tiny/*.json")
