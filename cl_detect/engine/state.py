"""Trainer checkpoints: everything needed to continue a run exactly where it stopped.

Holds the model (the frozen text tower is left out: it never changes), optimizer,
LR scheduler, EMA, sampler position, guard state, step counters and RNG states.
Written atomically, so an interruption during the write keeps the previous one.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from cl_detect.models._checkpoint_io import PARSE_ERRORS, atomic_save


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state(model) -> dict[str, torch.Tensor]:
    """The model's state without the text tower when it is frozen (it never changes)."""
    text_trains = any(p.requires_grad for p in model.text_encoder.parameters())
    return {k: v for k, v in model.state_dict().items() if text_trains or not k.startswith("text_encoder.")}


def load_model_state(model, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text_encoder.")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def save_trainer_state(path: Path, *, model, optimizer, scheduler, ema, sampler_state: dict, progress: dict,
                       guard_steps: int, config: dict) -> None:
    atomic_save({
        "model": model_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None, "sampler": sampler_state, "progress": progress,
        "guard_steps": guard_steps, "rng": rng_state(), "config": config,
    }, path)


def read_saved_progress(path: Path, fix: str) -> dict:
    """Load a file this package wrote (plain containers, tensors, numpy RNG state: trusted).

    Args:
        path: the file.
        fix: what to do when it cannot be read, for the message.

    Raises:
        ValueError: naming the file and `fix` when it is damaged (a copy or sync cut short).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (FileNotFoundError, PermissionError):  # not damage: OSError, which PARSE_ERRORS holds, covers them
        raise
    except PARSE_ERRORS as err:
        raise ValueError(f"{path}: cannot read this saved progress, the file is damaged "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); {fix}") from None


def load_trainer_state(path: Path) -> dict:
    saved = read_saved_progress(path, "delete it to train this task from its start")
    if saved.get("config") is not None:
        saved["progress"]["batches_in_epoch"] = _batches_for_this_world_size(saved, path)
    return saved


def _batches_for_this_world_size(saved: dict, path: Path) -> int:
    """The epoch's batches per process that the saved global draw position means in this run.

    The loop counts its own batches and saves `batches x batch_size` draws per
    process (x the world size, by `ShardedSampler`); a checkpoint written by W
    processes and resumed by another number must restart that count from the
    position, or the next checkpoint's position is wrong (draws repeated or skipped).
    """
    from cl_detect.engine.distributed import world_size

    position, epoch = int(saved["sampler"]["position"]), saved["sampler"]["epoch"]
    batch_size, accumulate = saved["config"]["batch_size"], saved["config"]["accumulate"]
    batches, rest = divmod(position, batch_size * world_size())
    if rest or batches % accumulate:
        raise ValueError(f"{path} stopped after {position} draws of epoch {epoch}, which {world_size()} "
                         f"process(es) x batch_size {batch_size} x accumulate {accumulate} cannot continue "
                         f"in whole optimizer steps; resume with the number of processes that wrote it")
    return batches


# the ways out of a checkpoint that cannot be continued, for messages
START_OVER = ("Start over (cl-detect pretrain/finetune --no-resume, cl-detect run --force, resume=False in "
              "Python), or use another out_dir (cl-detect run: another --out)")

# settings that change how a run is watched or fed, not what it computes
SETTINGS_FREE_TO_CHANGE = ("log_every", "num_workers", "checkpoint_every_steps", "guard_patience", "device")


def check_resumed_settings(saved: dict | None, config: dict, path: Path) -> None:
    """Refuse to resume (or to return as finished) a run written with other training settings.

    Args:
        saved: the `config` stored in the checkpoint (None in files from before it was stored).
        config: this call's `TrainConfig` as a dict.
        path: the checkpoint, for the message.

    Raises:
        ValueError: naming each changed setting, old and new value, and the two ways out.
    """
    if saved is None:
        return
    changed = settings_changes(saved, config, skip=SETTINGS_FREE_TO_CHANGE)
    if changed:
        raise ValueError(f"{path} holds a run with other training settings ({', '.join(changed)}); resuming it "
                         f"would give the old run's model under the new settings. {START_OVER}")


def settings_changes(old: dict, new: dict, skip: tuple[str, ...] = (),
                     by_key: tuple[str, ...] = ("train",)) -> list[str]:
    """"key old -> new" for each recorded setting that differs, compared on the keys both record,
    so a field a later version adds or drops is no change. Used by every "resume / keep / table
    this run?" check (trainer checkpoints, pretrain_run.json, a protocol run's state and results).

    Args:
        old, new: the recorded and the current settings.
        skip: keys free to change.
        by_key: mappings of settings fields (a `TrainConfig` as a dict), compared the same way
            key by key ("train.lr 0.001 -> 0.0005"); other values (a method list, options) compare whole.
    """
    changed = []
    for key in (key for key in old if key in new and key not in skip):
        before, after = old[key], new[key]
        if key in by_key and isinstance(before, dict) and isinstance(after, dict):
            changed += [f"{key}.{change}" for change in settings_changes(before, after, by_key=())]
        elif before != after:
            changed.append(f"{key} {before!r} -> {after!r}")
    return changed
