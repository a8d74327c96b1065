"""The continual loop, in the open, for one (protocol, methods, seed):

    model = ContinualModel(base detector, text encoder, methods)
    evaluate everything                                   # row 0
    for task in tasks:
        model.hook("before_task", task)
        train_one_task(model, task data + method extras)  # resumable
        model.hook("after_task", task)
        evaluate everything                               # row i

Progress (evaluations so far + the model after the last finished task) is kept
in `<out>/<protocol>/work/<method>_seed<k>/state.pt`, so an interrupted or
failed run continues at the task it stopped in; a finished run writes
`<out>/<protocol>/<method>_seed<k>.json` (see docs/protocols.md for its fields)
and drops its checkpoints unless asked to keep them.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import random
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cl_detect.bench._evaluation import evaluate_all, matrices, sweep_evaluator, sweep_rows, typed_rows
from cl_detect.bench._meta import run_meta
from cl_detect.bench.baselines import skips_training
from cl_detect.bench.config import RunConfig
from cl_detect.bench.protocol import ProtocolData
from cl_detect.bench.results import summarize
from cl_detect.engine.runlog import peak_memory_mb
from cl_detect.engine.state import (SETTINGS_FREE_TO_CHANGE, load_model_state, model_state, read_saved_progress,
                                    rng_state, set_rng_state, settings_changes)
from cl_detect.engine.task_data import build_task_training_set, checked_extras
from cl_detect.engine.train import TrainResult, resolve_device, train_one_task
from cl_detect.methods import ContinualModel, TaskContext, create_method
from cl_detect.models._checkpoint_io import atomic_save, atomic_write_text
from cl_detect.models.checkpoint import load_model

RESULT_SCHEMA = "cl_detect.result.v1"


def result_path(out: str | Path, protocol: str, label: str, seed: int) -> Path:
    return Path(out) / protocol / f"{label}_seed{seed}.json"


def work_dir(out: str | Path, protocol: str, label: str, seed: int) -> Path:
    return Path(out) / protocol / "work" / f"{label}_seed{seed}"


class BaseModel:
    """The base checkpoint, read once; every run gets its own deep copy."""

    def __init__(self, checkpoint: str | Path, text_encoder: str | None = None):
        self.detector, self.text_encoder = load_model(checkpoint, text_encoder_spec=text_encoder)

    def copy(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return copy.deepcopy(self.detector), copy.deepcopy(self.text_encoder)


@dataclass
class Progress:
    """What a run has done so far (kept in its `state.pt`)."""

    completed_tasks: int = -1  # -1: not even the base model evaluated
    evaluations: list[dict] = field(default_factory=list)
    extra_rows: list[dict] = field(default_factory=list)
    train: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    # what the run was started with (None: a state.pt from before they were kept)
    data_fingerprint: str | None = None
    settings: dict | None = None


class ChangedRunError(ValueError):
    """A run's saved progress was made with other data, prompts or settings than it now has."""


def run_settings(config: RunConfig, method_names: list[str], seed: int) -> dict:
    """What a run computes with besides its data: training settings (but those that only watch
    or feed it, `engine/state.py`), evaluation size, its methods' options and joint training."""
    train = dataclasses.asdict(config.train_config(seed))
    return {"train": {k: v for k, v in train.items() if k not in SETTINGS_FREE_TO_CHANGE},
            "eval_image_size": config.eval.image_size, "joint": config.joint,
            "method_options": {name: config.method_options.get(name) for name in method_names}}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: RunConfig, method_names: list[str], seed: int, base: BaseModel) -> ContinualModel:
    """Fresh detector + text encoder from the base checkpoint, wrapped by the named methods."""
    seed_everything(seed)
    detector, text_encoder = base.copy()
    methods = [create_method(name, config.method_options.get(name)) for name in method_names]
    return ContinualModel(detector, text_encoder, methods)


def _restore(model: ContinualModel, work: Path, data: ProtocolData, settings: dict) -> Progress:
    """Progress from `state.pt`; a state that no longer fits the model restarts the run.

    Raises:
        ChangedRunError: the run was started with other data, prompts or settings (`run_settings`).
    """
    state_file = work / "state.pt"
    fresh = Progress(data_fingerprint=data.fingerprint(), settings=settings)
    if not state_file.exists():
        return fresh
    saved = read_saved_progress(state_file, f"delete the folder {work} to start this run over")
    changed = _changes(saved["progress"], asdict(fresh))
    if changed:
        raise ChangedRunError(f"{state_file}: this unfinished run was started with other data or settings "
                              f"({changed}); continuing it would mix both in one result. Pass --force to start it "
                              f"over, or --out another folder to keep both")
    try:
        if saved["model"] is not None:
            load_model_state(model, saved["model"])
    except (ValueError, RuntimeError) as err:
        print(f"  cannot resume from {state_file} ({err}); starting this run again")
        shutil.rmtree(work)
        return fresh
    if saved.get("rng") is not None:  # files written before it was saved continue from the seed's state
        set_rng_state(saved["rng"])
    return Progress(**saved["progress"])


def _changes(saved: dict, now: dict) -> str:
    """The settings and data fingerprint that differ (old -> new), where `saved` holds them."""
    changed = []
    if saved.get("data_fingerprint") not in (None, now["data_fingerprint"]):
        changed.append(f"data fingerprint {saved['data_fingerprint']} -> {now['data_fingerprint']}: another "
                       f"split, image subset or prompt list")
    changed += settings_changes(saved.get("settings") or {}, now["settings"])
    return "; ".join(changed)


def _save(model: ContinualModel, work: Path, progress: Progress, with_model: bool, since: float) -> float:
    """Write `state.pt` with the time since `since` (a perf_counter mark) added to the run's
    elapsed time, so a resumed run's wall time counts every session; returns the new mark."""
    now = time.perf_counter()
    progress.elapsed_s += now - since
    work.mkdir(parents=True, exist_ok=True)
    # the RNG state too: the next task's `before_task` draws from it (the specialist's new classifier,
    # lora's per-task adapter), so a run resumed here continues as the uninterrupted one does
    atomic_save({"progress": asdict(progress), "model": model_state(model) if with_model else None,
                 "rng": rng_state()}, work / "state.pt")
    return now


def _evaluate_stage(model, data, config, progress: Progress, stage: int, train_task: str | None) -> None:
    for entry in evaluate_all(model, data, config.eval):
        progress.evaluations.append({"stage": stage, "train_task": train_task, **entry})


def joint_task(tasks: list):
    """One task holding every task's training data (the joint-training upper bound)."""
    from cl_detect.bench.joint import merge_task_datasets
    first = tasks[0]
    return dataclasses.replace(first, name="joint", train=merge_task_datasets([t.train for t in tasks]))


def continual_run(config: RunConfig, data: ProtocolData, method_names: list[str], seed: int, work: Path,
                  base: BaseModel, stop_after_steps: int | None = None) -> tuple[str, Progress, ContinualModel]:
    """Run (or continue) the loop; returns ("finished" | "interrupted", progress, model)."""
    start = time.perf_counter()
    device = resolve_device(config.train_config().device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(config, method_names, seed, base).to(device)
    progress = _restore(model, work, data, run_settings(config, method_names, seed))
    progress.total_params = model.parameter_counts()[1]
    label = config.run_label(method_names)
    if progress.completed_tasks < 0:
        _evaluate_stage(model, data, config, progress, 0, None)
        progress.completed_tasks = 0
        start = _save(model, work, progress, with_model=False, since=start)
    train_config = config.train_config(seed)
    evaluate_fn = sweep_evaluator(data, config.eval)
    tasks = [joint_task(data.tasks)] if config.joint else data.tasks
    for index in range(progress.completed_tasks, len(tasks)):
        task = tasks[index]
        task_dir = work / f"task{index + 1}_{task.name}"
        context = TaskContext(index=index, name=task.name, vocabulary=tuple(task.train.vocabulary.names),
                              train_dataset=task.train, out_dir=task_dir, image_size=train_config.image_size,
                              extras={"general_vocabulary": data.general_vocabulary(), "evaluate_fn": evaluate_fn})
        model.hook("before_task", context)
        trainable, total = model.parameter_counts()
        extras = checked_extras([pair for method in model.methods for pair in method.train_datasets(model, context)],
                                config.allow_data_errors)
        if skips_training(model):  # zeroshot: hooks and evaluations only
            result = TrainResult("finished", 0, 0.0, 0.0, peak_memory_mb(device), {})
        else:
            dataset, sampler = build_task_training_set(task.train, extras, train_config)
            result = train_one_task(model, dataset, train_config, task_dir, sampler=sampler, resume=True,
                                    stop_after_steps=stop_after_steps)
        if result.status != "finished":
            progress.elapsed_s += time.perf_counter() - start
            return result.status, progress, model
        model.hook("after_task", context)
        if config.joint:  # the one jointly trained model stands after every task
            for stage, each in enumerate(data.tasks, start=1):
                _evaluate_stage(model, data, config, progress, stage, each.name)
        else:
            _evaluate_stage(model, data, config, progress, index + 1, task.name)
        progress.extra_rows += sweep_rows(model, task.name, label, seed)
        progress.train.append({"task": task.name, "steps": result.steps, "train_images": len(task.train),
                               "mixed_in_images": sum(len(d) for d, _ in extras), "wall_time_s": result.wall_time_s,
                               "images_per_s": result.images_per_s, "trainable_params": trainable,
                               "total_params": total})
        progress.trainable_params = max(progress.trainable_params, trainable)
        progress.completed_tasks = len(data.tasks) if config.joint else index + 1
        start = _save(model, work, progress, with_model=True, since=start)
        (task_dir / "checkpoint.pt").unlink(missing_ok=True)  # state.pt now holds this task's model
    progress.elapsed_s += time.perf_counter() - start
    return "finished", progress, model


def result_record(config: RunConfig, data: ProtocolData, label: str, seed: int, progress: Progress,
                  status: str, error: str | None, device: torch.device, settings: dict | None = None) -> dict:
    """The JSON object written for one run (fields documented in docs/protocols.md); `settings` is
    `run_settings`, recorded so that a later `cl-detect run` with other settings does not skip it."""
    task_names = [t.name for t in data.tasks]
    retention_names = [r.name for r in data.retention]
    accuracy, retention = matrices(progress.evaluations, task_names, retention_names)
    summary = {}
    if status == "finished":  # NaN-aware: not-applicable entries are skipped as the formulas allow
        try:
            summary = summarize(np.array(accuracy, dtype=float),
                                np.array(retention, dtype=float).reshape(len(accuracy), -1), retention_names)
        except ValueError as err:  # a cell the metrics cannot do without was not scored: no table row
            status, error = "failed", f"the run trained every task, but {err}"
    return {
        "schema": RESULT_SCHEMA, "protocol": config.name, "method": label, "methods": label.split("+"),
        "seed": seed, "status": status, "error": error, "tasks": task_names, "retention_sets": retention_names,
        "retention_protocols": {r.name: r.protocol for r in data.retention},
        "accuracy_matrix": accuracy, "retention_matrix": retention,
        "summary": {k: (None if np.isnan(v) else v) for k, v in summary.items()},
        "rows": typed_rows(progress.evaluations, label, seed) + progress.extra_rows,
        "per_category_ap": [{"train_task": e["train_task"], "stage": e["stage"], "eval_set": e["eval_set"],
                             "ap": e["per_category_ap"]} for e in progress.evaluations],
        "train": progress.train, "wall_time_s": progress.elapsed_s, "peak_memory_mb": peak_memory_mb(device),
        "trainable_params": progress.trainable_params, "total_params": progress.total_params,
        "meta": run_meta(device), "config": config.to_dict(), "data_fingerprint": data.fingerprint(),
        "settings": _as_json(settings),
    }


def _as_json(value):
    """`value` as it reads back from a result file (tuples become lists), so that it compares equal."""
    return json.loads(json.dumps(value, default=float))


def _is_finished(path: Path, data: ProtocolData, settings: dict) -> bool:
    """Whether an existing result file holds this run, finished (so it is skipped).

    Raises:
        ValueError: the file is damaged, or it was made with other data or prompts (another split,
            image subset or prompt file under the same protocol name) or other settings (epochs,
            image size, method options: `run_settings`), which a skip would keep. Files written
            before the settings were recorded are checked for their data only.
    """
    try:
        stored = json.loads(path.read_text())
        status = stored.get("status")
        saved = {"data_fingerprint": stored.get("data_fingerprint"), "settings": stored.get("settings")}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: this run's result file is not a valid result ({err}); delete it to run "
                         f"(or continue) the run again, or pass --force") from None
    changed = _changes(saved, {"data_fingerprint": data.fingerprint(), "settings": _as_json(settings)})
    if status == "finished" and changed:
        raise ValueError(f"{path} was made with other data or settings than the run now asked for ({changed}); "
                         f"pass --force to run it again, or --out another folder to keep both")
    return status == "finished"


def run_one(config: RunConfig, data: ProtocolData, method_names: list[str], seed: int, out: str | Path,
            base: BaseModel, force: bool = False, keep_checkpoints: bool = False,
            stop_after_steps: int | None = None) -> str:
    """One (protocol, methods, seed): skip it when finished, else run or continue it and write its JSON.

    Args:
        config, data: the protocol and its datasets.
        method_names: methods composed in this run.
        seed: run seed (model init, sampling, augmentation).
        out: results folder.
        base: the base model.
        force: run again even when a finished result exists (progress is discarded).
        keep_checkpoints: keep `state.pt` after the run finishes.
        stop_after_steps: stop every task's training after this many steps (tests, quick looks).

    Returns:
        "skipped", "finished", "failed" or "interrupted" (no JSON written; run again to continue).
    """
    label = config.run_label(method_names)
    path, work = result_path(out, config.name, label, seed), work_dir(out, config.name, label, seed)
    settings = run_settings(config, method_names, seed)
    if path.exists() and not force and _is_finished(path, data, settings):
        return "skipped"
    if force:
        shutil.rmtree(work, ignore_errors=True)
    device = resolve_device(config.train_config().device)
    progress, error, started = Progress(), None, time.time()
    try:
        status, progress, _ = continual_run(config, data, method_names, seed, work, base, stop_after_steps)
    except ChangedRunError:  # stops the command, as a finished result made with other data does
        raise
    except Exception:  # a failed run is recorded with its traceback and the loop goes on
        status, error = "failed", traceback.format_exc()
        state_file = work / "state.pt"
        saved = started
        try:  # the progress so far, unless the failure was that state.pt cannot be read
            progress = Progress(**read_saved_progress(state_file, "")["progress"])
            saved = max(started, state_file.stat().st_mtime)  # its elapsed time runs to its last save
        except (FileNotFoundError, ValueError):
            pass
        progress.elapsed_s += time.time() - saved
    if status == "interrupted":
        return status
    record = result_record(config, data, label, seed, progress, status, error, device, settings)
    atomic_write_text(path, json.dumps(record, indent=1, default=float) + "\n")
    if status == "finished" and not keep_checkpoints:
        for checkpoint in work.rglob("*.pt"):
            checkpoint.unlink()
    return status
