"""The record of what a `pretrain`/`finetune` run's weights depend on besides its `train:` block
(which the trainer checkpoint holds and checks): resuming with another config is refused."""
from __future__ import annotations

import json
from pathlib import Path

from cl_detect.engine._pretrain_config import PretrainConfig
from cl_detect.engine.distributed import is_main_process
from cl_detect.engine.state import START_OVER, settings_changes
from cl_detect.models._checkpoint_io import atomic_write_text

# what the trained weights depend on besides `train:` (which train_one_task checks itself)
_RUN_KEYS = ("datasets", "detector", "detector_kwargs", "text_encoder", "init_checkpoint", "negatives", "methods")
_SUBSET_KEYS = ("image_root", "image_list", "max_images")
_DATASET_KEYS = ("path", "format", "split", "class_names") + _SUBSET_KEYS
_RUN_RECORD = "pretrain_run.json"


def _run_settings(config: PretrainConfig) -> dict:
    run = {key: getattr(config, key) for key in _RUN_KEYS}
    # the subset keys only when set, so a record written before they existed still matches
    run["datasets"] = [{key: getattr(spec, key) for key in _DATASET_KEYS
                        if key not in _SUBSET_KEYS or getattr(spec, key) is not None} for spec in config.datasets]
    return json.loads(json.dumps(run))  # as it reads back (tuples become lists)


def check_same_run(config: PretrainConfig, resume: bool) -> None:
    """Refuse to resume (or return as finished) a run of `out_dir` made with another config.

    The trainer checkpoint holds only the `train:` settings; without this, another training set,
    init checkpoint or method list would return the old run's model under the new config.

    Raises:
        ValueError: naming each changed key, old and new value, and the ways out.
    """
    out_dir = Path(config.out_dir)
    record = out_dir / _RUN_RECORD
    if not (resume and (out_dir / "checkpoint.pt").exists() and record.exists()):
        return
    saved = json.loads(record.read_text())
    changed = ", ".join(settings_changes(saved, _run_settings(config)))
    if changed:
        raise ValueError(f"{out_dir / 'checkpoint.pt'} holds a run made with another config ({changed}); "
                         f"resuming it would give the old run's model under the new config. {START_OVER}")


def record_run(config: PretrainConfig) -> None:
    """Write what `check_same_run` compares into `out_dir` (when training starts)."""
    if is_main_process():
        out_dir = Path(config.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / _RUN_RECORD, json.dumps(_run_settings(config), indent=2) + "\n")
