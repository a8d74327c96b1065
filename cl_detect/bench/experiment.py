"""Run a protocol for several method lists and seeds: one result JSON per (protocol, method, seed).

    config = load_run_config("experiments/synthetic.yaml")
    run_experiment(config, ["finetune", "lora+distill"], seeds=[0, 1, 2], out="results")

The datasets and the base checkpoint are read once (per worker process with
`jobs > 1`); each run starts from its own copy. Runs are independent: one
failing is recorded and the next starts. On a CPU, `jobs=2` with one thread
each uses two cores better than one process with two threads: the tiny
detector's layers are too small for intra-op parallelism to pay.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from cl_detect.bench.config import RunConfig, save_resolved, split_method_specs
from cl_detect.bench.prepare import prepare_protocol
from cl_detect.bench.protocol import load_protocol_data
from cl_detect.bench.results import error_message
from cl_detect.bench.runner import BaseModel, result_path, run_one
from cl_detect.engine.config import check_device_available
from cl_detect.engine.train import resolve_device
from cl_detect.methods import list_methods
from cl_detect.methods.registry import method_classes
from cl_detect.models.fuse import check_cpp_compiler

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def method_runs(specs: list[str] | None, config: RunConfig) -> list[list[str]]:
    """Method lists to run: `specs` ("a+b" composes), else the protocol's, else every registered method alone.

    Raises:
        ValueError: an unknown method name (listing the registered ones), or a composition whose
            methods cannot be combined (two trainers, a method twice, ...), before any run starts.
    """
    specs = specs or config.methods or list_methods()
    return split_method_specs(specs, config.method_options)


def with_overrides(config: RunConfig, image_size: int | None = None, max_train_images: int | None = None,
                   device: str | None = None, method_specs: list[str] | None = None) -> RunConfig:
    """The config with command-line settings applied (so the saved config says what ran).

    Args:
        config: the protocol.
        image_size: training and evaluation size; also the `image_size` option of the methods that
            run the detector themselves (ewc's Fisher pass), among the methods that will run.
        max_train_images: cap on every task's training images.
        device: training/evaluation device.
        method_specs: the method lists that will run, as `run_experiment` takes them (None: the
            protocol's, else every registered method).
    """
    train, evaluation, tasks = dict(config.train), config.eval, config.tasks
    options = {name: dict(values or {}) for name, values in config.method_options.items()}
    if image_size is not None:
        train["image_size"] = image_size
        evaluation = dataclasses.replace(evaluation, image_size=image_size)
        for name in _sized_methods(method_specs, config):
            options.setdefault(name, {})["image_size"] = image_size
    if device is not None:
        train["device"] = device
    if max_train_images is not None:
        tasks = [dataclasses.replace(task, train=dataclasses.replace(
            task.train, max_images=min(max_train_images, task.train.max_images or max_train_images)))
            for task in tasks]
    return dataclasses.replace(config, train=train, eval=evaluation, tasks=tasks, method_options=options)


def _sized_methods(method_specs: list[str] | None, config: RunConfig) -> list[str]:
    """The methods that will run and have an `image_size` option (they run the detector themselves)."""
    names = dict.fromkeys(name for names in method_runs(method_specs, config) for name in names)
    return [name for name in names
            if any(f.name == "image_size" for f in dataclasses.fields(method_classes(name)[0]))]


def with_method_image_sizes(config: RunConfig, method_specs: list[str] | None) -> RunConfig:
    """The config with the `image_size` a running method leaves unset (None: the training size) written
    out as that size, so the saved config and every result JSON say the size the method used."""
    options = {name: dict(values or {}) for name, values in config.method_options.items()}
    for name in _sized_methods(method_specs, config):
        if options.get(name, {}).get("image_size") is None:
            options.setdefault(name, {})["image_size"] = config.train_config().image_size
    return dataclasses.replace(config, method_options=options)


def run_experiment(config: RunConfig, method_specs: list[str] | None, seeds: list[int] | None, out: str | Path,
                   force: bool = False, keep_checkpoints: bool = False, stop_after_steps: int | None = None,
                   jobs: int = 1, log=print) -> list[dict]:
    """Run every (method list, seed) of a protocol.

    Args:
        config: the resolved protocol.
        method_specs: e.g. ["finetune", "lora+distill"]; None: the protocol's or every registered method.
        seeds: None: the protocol's seeds.
        out: results folder (`<out>/<protocol>/<method>_seed<k>.json`, resolved config in `config.yaml`).
        force: redo finished runs.
        keep_checkpoints: keep each run's `state.pt` after it finishes.
        stop_after_steps: stop every task's training after this many steps (quick looks, tests).
        jobs: runs at once, each in its own process with `torch` threads = current threads // jobs.
        log: where progress lines go.

    Returns:
        One {"method", "seed", "status"} per run, status "finished", "failed", "skipped" or "interrupted".
    """
    # a method list or seed named twice would run twice (with --jobs, two processes writing one file)
    runs = list({"+".join(names): names for names in method_runs(method_specs, config)}.values())
    if config.label and len(runs) > 1:
        raise ValueError(f"label {config.label!r} names one run, but {len(runs)} method lists were asked for: "
                         f"{['+'.join(r) for r in runs]}")
    if config.label and config.methods and runs != method_runs(None, config):  # the result would say the label's
        raise ValueError(f"label {config.label!r} names the run of methods {config.methods} (a baseline file's), "
                         f"but {['+'.join(r) for r in runs]} was asked for: drop --methods, or the file that "
                         f"sets the label")
    seeds = list(dict.fromkeys(config.seeds if seeds is None else seeds))
    check_device_available(config.train_config().device, f"protocol {config.name!r} train.device")
    if config.eval.compile and resolve_device(config.train_config().device).type == "cpu":
        check_cpp_compiler()  # else every run would fail at its first evaluation, after the base model loaded
    config = with_method_image_sizes(config, method_specs)
    prepare_protocol(config, log)
    save_resolved(config, Path(out) / config.name / "config.yaml")
    pairs = [(names, seed) for seed in seeds for names in runs]
    log(f"protocol {config.name}: {len(config.tasks)} tasks ({', '.join(t.name for t in config.tasks)}), "
        f"retention sets: {', '.join(r.name for r in config.retention) or 'none'}; {len(runs)} method list(s) "
        f"x {len(seeds)} seed(s)" + (f", {jobs} at a time" if jobs > 1 else ""))
    options = dict(force=force, keep_checkpoints=keep_checkpoints, stop_after_steps=stop_after_steps)
    _LOADED.clear()  # files may have changed since an earlier call (a re-made base model)
    if jobs <= 1:
        return [_run_pair(config, names, seed, out, options, log) for names, seed in pairs]
    threads = max(torch.get_num_threads() // jobs, 1)
    context = multiprocessing.get_context("spawn")  # no forked copies of torch thread pools
    stop = context.Event()
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=start_worker, initargs=(threads, stop)) as pool:
        futures = []
        try:
            # the run processes start (on submit) with SIGINT blocked, so a Ctrl-C while they import torch
            # is not a KeyboardInterrupt traceback in each; one that reaches this process meanwhile is raised
            # when the block ends, here, and stops the runs like any other
            with _sigint_blocked():
                for names, seed in pairs:
                    futures.append(pool.submit(_run_pair, config, names, seed, out, options))
            wait(futures, return_when=FIRST_EXCEPTION)
        except KeyboardInterrupt:
            _stop_runs(pool, futures, stop)
            raise
        stopping = next((f.exception() for f in futures if f.done() and f.exception() is not None), None)
        if stopping is not None:  # an error that stops the command (other data, other settings): at once
            _stop_runs(pool, futures, stop)
            raise stopping
        return [future.result() for future in futures]


def _stop_runs(pool: ProcessPoolExecutor, futures: list, stop) -> None:
    """Ctrl-C (or `kill -INT`) of this process, or a run's error that stops the command: drop the
    runs not started, tell the run processes to start no other (`stop`, for runs the executor has
    handed over already), and pass a SIGINT to them (their own process group keeps a terminal's
    Ctrl-C from reaching them twice): a running run checkpoints the step under way and stops, an
    idle process ignores it. Wait for that. A second Ctrl-C is passed on too: they stop at once."""
    stop.set()
    for future in futures:
        future.cancel()
    processes = list(pool._processes.values())  # noqa: SLF001 (the executor names no other way to them)
    for attempt in range(2):
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        except KeyboardInterrupt:
            if attempt:
                raise


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread (and inherited, blocked, by processes started meanwhile: the
    mask survives exec); one that arrives is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


_LOADED: dict[str, tuple] = {}  # per process: protocol name -> (datasets, base model)


def start_worker(threads: int, stop=None) -> None:
    """Run-process setup: its torch threads, the parent's stop event, SIGINT only during a run, and
    (Linux) a SIGTERM when the parent dies.

    Without the parent-death signal, a `cl-detect run --jobs N` killed on its own (a
    scheduler's SIGTERM or SIGKILL to one process) left its runs going as orphans.
    They are checkpointed, so the next `cl-detect run` resumes them.
    """
    global _STOP
    _STOP = stop
    torch.set_num_threads(threads)
    if hasattr(os, "setpgid"):  # a terminal's Ctrl-C reaches the parent only, which passes it on once
        os.setpgid(0, 0)
    # idle, a SIGINT must not kill the process: the executor would then kill the others mid-checkpoint
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # started blocked (`_sigint_blocked`): one sent meanwhile is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)


_STOP = None  # in a `jobs > 1` run process: the parent's event that says the command is stopping


def _run_pair(config: RunConfig, names: list[str], seed: int, out: str | Path, options: dict, log=print) -> dict:
    """One run, reading the datasets and base model the first time this process needs them."""
    label = config.run_label(names)
    if _STOP is not None:  # a run process: SIGINT stops this run (first, so none is missed after the check)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if _STOP is not None and _STOP.is_set():  # handed over before the parent stopped the command
            return {"method": label, "seed": seed, "status": "interrupted"}
        key = repr(config)
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = (load_protocol_data(config), BaseModel(config.base_model.checkpoint,
                                                                    config.base_model.text_encoder))
        data, base = _LOADED[key]
        status = run_one(config, data, names, seed, out, base, **options)
    finally:
        if _STOP is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    shown = status
    if status == "failed":  # the reason, so the user need not open the JSON to learn it
        path = result_path(out, config.name, label, seed)
        shown += f": {error_message(json.loads(path.read_text()).get('error'))} (traceback in {path})"
    log(f"== {config.name} | {label} | seed {seed}: {shown}")
    return {"method": label, "seed": seed, "status": status}
