"""`cl-detect run --jobs N` run processes die with the process that started them (no orphans)."""
from __future__ import annotations

import dataclasses
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


def _tiny_protocol(root: Path, epochs: int) -> Path:
    """A two-task synthetic protocol whose runs train for `epochs` epochs of 2 steps."""
    import torch
    import yaml

    from cl_detect.data.synthetic import write_synthetic_world
    from cl_detect.models.checkpoint import save_model
    from cl_detect.models.registry import create_detector

    write_synthetic_world(root / "world", seed=0, image_size=64, num_base_train=4, num_test=6,
                          num_task_train=8, num_tasks=2)
    torch.manual_seed(0)
    save_model(root / "base.pt", create_detector("yolo_world_v2_t", text_dim=384), "minilm")
    config = {
        "name": "tiny", "data_root": str(root / "world"), "base_model": {"checkpoint": str(root / "base.pt")},
        "tasks": [{"name": f"task{i}", "train": f"task{i}/train.json", "test": f"task{i}/test.json"} for i in (1, 2)],
        "retention": [{"name": "base", "data": "retention/test.json"}],
        "eval": {"image_size": 64, "batch_size": 8},
        "train": {"epochs": epochs, "batch_size": 4, "image_size": 64, "num_texts": 8, "device": "cpu",
                  "amp": False, "num_workers": 0, "mosaic": False, "close_mosaic_epochs": 0, "log_every": 1},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root / "tiny.yaml"


def _start_run(protocol: Path, out: Path, methods: list[str], seeds: list[str], stderr=subprocess.DEVNULL):
    """`cl-detect run --jobs 2` in its own session, SIGINT at its default (as a terminal starts it)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "cl_detect.cli", "run", str(protocol), "--methods", *methods, "--seeds", *seeds,
         "--jobs", "2", "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="run processes get their own group on Linux")
def test_sigint_to_the_parent_alone_checkpoints_the_runs_and_starts_no_other(tmp_path):
    # `kill -INT <parent>` used to wait for the running runs to finish, and then ran the queued ones
    import glob

    import torch

    protocol, out = _tiny_protocol(tmp_path, epochs=30), tmp_path / "res"
    parent = _start_run(protocol, out, ["finetune"], ["0", "1", "2"])
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
    # each running run checkpointed the step under way (the executor may have handed the queued run to a
    # process already: it is stopped too), and none ran to its end
    assert len(saved) >= 2 and set(saved) == {"interrupted"}
    assert not glob.glob(f"{out}/tiny/*.json")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="run processes get their own group on Linux")
def test_sigint_with_an_idle_run_process_still_checkpoints_the_running_run(tmp_path):
    # the idle process died of the SIGINT, and the executor then killed the running one before its checkpoint
    import glob

    import torch

    protocol, out = _tiny_protocol(tmp_path, epochs=30), tmp_path / "res"
    parent = _start_run(protocol, out, ["zeroshot", "finetune"], ["0"])
    try:
        deadline = time.monotonic() + 240
        while not ((out / "tiny" / "zeroshot_seed0.json").exists()
                   and glob.glob(f"{out}/tiny/work/finetune_seed0/task1_task1/log.jsonl")):
            assert parent.poll() is None and time.monotonic() < deadline, "the runs did not get going"
            time.sleep(0.5)
        time.sleep(1)  # the zeroshot process is idle now
        os.kill(parent.pid, signal.SIGINT)
        assert parent.wait(timeout=120) == 130
    finally:
        parent.kill()
    checkpoint = out / "tiny" / "work" / "finetune_seed0" / "task1_task1" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=False)["progress"]["status"] == "interrupted"
    assert not (out / "tiny" / "finetune_seed0.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="run processes get their own group on Linux")
def test_with_jobs_an_error_that_stops_the_command_stops_it_at_once(tmp_path):
    # it was raised only after every other queued run had finished (here: 30 epochs each)
    from cl_detect.bench.config import load_run_config
    from cl_detect.bench.experiment import run_experiment, with_overrides

    config, out = load_run_config(_tiny_protocol(tmp_path, epochs=30)), tmp_path / "res"
    quick = dataclasses.replace(config, train={**config.train, "epochs": 1})
    run_experiment(with_overrides(quick, max_train_images=4), ["finetune"], [0], out, log=lambda line: None)
    start = time.monotonic()
    with pytest.raises(ValueError, match="finetune_seed0.json was made with other data"):
        run_experiment(config, ["finetune"], [0, 1, 2], out, jobs=2, log=lambda line: None)
    assert time.monotonic() - start < 150  # the other runs train 30 epochs: they were stopped
    assert not (out / "tiny" / "finetune_seed1.json").exists() and not (out / "tiny" / "finetune_seed2.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="run processes get their own group on Linux")
def test_a_terminal_ctrl_c_while_the_run_processes_start_prints_no_traceback(tmp_path):
    # the run processes were still importing torch in the terminal's process group: each printed a
    # KeyboardInterrupt traceback under the command's own "interrupted" line
    protocol, out = _tiny_protocol(tmp_path, epochs=30), tmp_path / "res"
    parent = _start_run(protocol, out, ["zeroshot", "finetune"], ["0"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the run processes did not start"
            time.sleep(0.05)
        os.killpg(parent.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches its whole foreground group
        _, errors = parent.communicate(timeout=120)
    finally:
        parent.kill()
    assert parent.returncode == 130
    assert "Traceback" not in errors and "interrupted: cl-detect run stopped by Ctrl-C" in errors


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="SIGINT is blocked during the submits on POSIX")
def test_a_ctrl_c_during_the_submits_stops_the_runs(tmp_path, monkeypatch):
    # held back while the runs were submitted, it was raised outside the handler that stops the runs:
    # the command then waited for every run to train to its end
    from concurrent.futures import ProcessPoolExecutor

    from cl_detect.bench import experiment
    from cl_detect.bench.config import load_run_config

    config, out = load_run_config(_tiny_protocol(tmp_path, epochs=1)), tmp_path / "res"
    submit, stopped = ProcessPoolExecutor.submit, []

    def submit_then_ctrl_c(pool, *args, **kwargs):
        future = submit(pool, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # raised at once if another thread takes it, else when the block ends
        return future

    def recording_stop(pool, futures, stop):
        stopped.append(len(futures))
        return stop_runs(pool, futures, stop)

    stop_runs = experiment._stop_runs
    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit_then_ctrl_c)
    monkeypatch.setattr(experiment, "_stop_runs", recording_stop)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(config, ["zeroshot"], [0, 1], out, jobs=2, log=lambda line: None)
    assert len(stopped) == 1 and stopped[0] >= 1  # the runs submitted so far were told to stop
