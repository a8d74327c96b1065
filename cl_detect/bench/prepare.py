"""Make what a protocol needs and can make itself: the synthetic world and its base model.

Real protocols name data and checkpoints the user provides; a missing file is
an error that says where to get it. The synthetic protocol carries the
settings of its world (`synthetic_world`) and of its base model
(`base_model.pretrain`); both are (re)made when missing or made with other
settings, and reused otherwise (`cache/` by default).
"""
from __future__ import annotations

import json
from pathlib import Path

from cl_detect.bench.config import RunConfig
from cl_detect.data.synthetic import write_synthetic_world


def _world_matches(world_json: Path, settings: dict) -> bool:
    world = json.loads(world_json.read_text())
    base, task1 = world["splits"]["base"]["counts"], world["splits"].get("task1", {}).get("counts", {})
    found = {"seed": world["seed"], "image_size": world["image_size"], "num_base_train": base["train"]["images"],
             "num_test": base["test"]["images"], "num_tasks": len(world["task_order"]),
             "num_task_train": task1.get("train", {}).get("images")}
    return all(found.get(key) == value for key, value in settings.items())


def _base_model_matches(checkpoint: Path, settings: dict) -> bool:
    from cl_detect.models.checkpoint import read_model_file
    return read_model_file(checkpoint).get("meta", {}).get("made_with") == settings


def prepare_protocol(config: RunConfig, log=print) -> None:
    """Write the synthetic world and pretrain the base model when the protocol asks for them.

    Args:
        config: the protocol.
        log: where progress lines go.
    """
    world_dir = Path(config.data_root)
    remade_world = False
    if config.synthetic_world is not None:
        world_json = world_dir / "world.json"
        if not world_json.exists() or not _world_matches(world_json, config.synthetic_world):
            log(f"writing the synthetic world to {world_dir}")
            write_synthetic_world(world_dir, **config.synthetic_world)
            remade_world = True
    checkpoint = Path(config.base_model.checkpoint)
    pretrain = config.base_model.pretrain
    if pretrain is None:
        if not checkpoint.exists():
            raise FileNotFoundError(f"base model {checkpoint} not found; see docs/protocols.md for how to obtain "
                                    f"the weights of protocol {config.name!r}")
        return
    made_with = {"world": config.synthetic_world, "pretrain": pretrain,
                 "text_encoder": config.base_model.text_encoder}
    if remade_world or not checkpoint.exists() or not _base_model_matches(checkpoint, made_with):
        from cl_detect.bench.demo_base import pretrain_base_model
        log(f"pretraining the base model -> {checkpoint} (settings {pretrain})")
        meta = pretrain_base_model(world_dir, checkpoint, text_encoder=config.base_model.text_encoder or "minilm",
                                   made_with=made_with, **pretrain)
        log(f"base model: AP {meta['base_test_ap']:.3f} on the base test set after {meta['wall_time_s']:.0f} s")
