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

from cl_detect.bench.config import BASE_PRETRAIN_TRAIN, RunConfig
from cl_detect.data.synthetic import write_synthetic_world


def _world_matches(world_json: Path, settings: dict) -> bool:
    world = json.loads(world_json.read_text())
    base, task1 = world["splits"]["base"]["counts"], world["splits"].get("task1", {}).get("counts", {})
    found = {"seed": world["seed"], "image_size": world["image_size"], "num_base_train": base["train"]["images"],
             "num_test": base["test"]["images"], "num_tasks": len(world["task_order"]),
             "num_task_train": task1.get("train", {}).get("images")}
    return all(found.get(key) == value for key, value in settings.items())


def read_model_meta(checkpoint: Path) -> dict:
    from cl_detect.models.checkpoint import read_model_file
    return read_model_file(checkpoint).get("meta", {})


def _made_by_a_protocol(checkpoint: Path) -> bool:
    """Whether `checkpoint` is a base model that `prepare_protocol` wrote (its meta has `made_with`)."""
    try:
        return "made_with" in read_model_meta(checkpoint)
    except Exception:  # an official checkpoint, or any file this reader does not know: not ours to replace
        return False


def _base_model_matches(checkpoint: Path, settings: dict) -> bool:
    return read_model_meta(checkpoint).get("made_with") == settings


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
    if checkpoint.exists() and not _made_by_a_protocol(checkpoint):
        raise ValueError(f"{checkpoint} exists and was not made by a protocol's pretraining (an official or your "
                         f"own checkpoint), but base_model.pretrain would write a new base model over it: set "
                         f"base_model.pretrain: null to use it as it is (an --override's base_model is merged "
                         f"into the protocol's, so its pretrain stays unless set), or name another checkpoint path")
    if remade_world or not checkpoint.exists() or not _base_model_matches(checkpoint, made_with):
        from cl_detect.engine.pretrain import pretrain as run_pretraining
        log(f"pretraining the base model -> {checkpoint} (settings {pretrain})")
        settings = base_pretrain_config(world_dir, checkpoint, config.base_model.text_encoder or "minilm", pretrain)
        run_pretraining(settings, extra_meta={"made_with": made_with})
        # the finished trainer state would let a later, differently-set pretraining "resume" into these weights
        (Path(settings["out_dir"]) / "checkpoint.pt").unlink(missing_ok=True)
        meta = read_model_meta(checkpoint)
        log(f"base model: AP {meta['final_metrics']['base']['AP']:.3f} on the base test set after "
            f"{meta['wall_time_s']:.0f} s")


def base_pretrain_config(world_dir: Path, checkpoint: Path, text_encoder: str, settings: dict) -> dict:
    """The `cl-detect pretrain` config of a protocol's `base_model.pretrain` settings.

    The official recipe at demo scale: the detector trained from scratch (`finetune`,
    text tower frozen) on every class of the world's `base` split with AdamW, warmup,
    linear decay, mosaic (off for the last epoch) and the EMA, whose official time
    constant (2000 steps) is longer than the whole run, so it is scaled to the run.

    Args:
        world_dir: the synthetic world.
        checkpoint: where the base model goes (logs in `<stem>_train/` beside it).
        text_encoder: text encoder spec.
        settings: `detector` plus any TrainConfig fields (epochs, batch_size, image_size, lr, ...).
    """
    train = {**BASE_PRETRAIN_TRAIN, **settings}
    detector = train.pop("detector", "yolo_world_v2_t")
    images = json.loads((world_dir / "world.json").read_text())["splits"]["base"]["counts"]["train"]["images"]
    steps = train["epochs"] * (images // train["batch_size"])
    train.setdefault("ema_gamma", max(steps / 5, 1.0))
    return {"detector": detector, "text_encoder": text_encoder, "methods": {"finetune": {}},
            "datasets": [{"path": str(world_dir / "base" / "train.json"), "format": "coco"}],
            "test_sets": [{"name": "base", "path": str(world_dir / "base" / "test.json"), "format": "coco"}],
            "train": train, "output": str(checkpoint), "out_dir": str(checkpoint.parent / f"{checkpoint.stem}_train")}
