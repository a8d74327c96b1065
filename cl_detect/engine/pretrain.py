"""Open-vocabulary (pre)training of a detector from a YAML config, and single-task fine-tuning.

    path = pretrain("experiments/pretrain/synthetic_base.yaml")   # -> the model checkpoint

Steps: (optionally) write the synthetic world; read every dataset and run the
dataset doctor on it (refusing on errors unless `allow_data_errors`); build the
detector, load the init checkpoint through `transfer_weights` (the report is
printed and kept in the checkpoint's meta); train with `train_one_task`; write
the model with `save_model`; evaluate on the test sets; write `metrics.json`.

Vocabularies of several datasets (`negatives`):
- "union" (default): the class lists are merged into one vocabulary (names
  compared case- and space-insensitively, first spelling kept) and labels are
  remapped, so each image's negative prompts are drawn from the classes of
  every dataset. More negatives per image, but a class of dataset A that is
  present and unannotated in an image of dataset B becomes a false negative.
- "own": each dataset keeps its vocabulary and draws negatives only from it
  (the official per-dataset behaviour); the datasets are mixed in proportion
  to their size.
Grounding records (captions with phrases) always take their positives and
negatives from their own caption's phrases, as in the official GoldG pipeline.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

from cl_detect._yaml import load_yaml
from cl_detect.data.merge import merge_datasets
from cl_detect.data.records import DetectionDataset
from cl_detect.engine._pretrain_config import DEFAULT_DETECTOR, DatasetSpec, PretrainConfig
from cl_detect.engine._pretrain_run import check_same_run, record_run
from cl_detect.engine.config import TrainConfig, check_device_available
from cl_detect.engine.distributed import (
    barrier, evaluate_distributed, init_distributed, is_distributed, is_main_process)
from cl_detect.engine.session import only_process_in
from cl_detect.engine.task_data import augment_config, checked_extras, mix_in
from cl_detect.engine.train import train_one_task
from cl_detect.engine.transfer import transfer_weights
from cl_detect.models._checkpoint_io import atomic_write_text
from cl_detect.methods import ContinualModel, TaskContext, create_method


def load_config(config: dict | str | Path) -> PretrainConfig:
    """A `PretrainConfig` from a dict or a YAML file (unknown keys are an error)."""
    if isinstance(config, dict):
        return PretrainConfig.from_dict(config)
    data = load_yaml(Path(config).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{config}: a pretrain config holds one mapping of settings (`key: value` lines)")
    try:
        return PretrainConfig.from_dict(data)
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"{config}: {err}") from None


def read_checked(spec: DatasetSpec, allow_data_errors: bool) -> DetectionDataset:
    """Read a dataset and run the doctor on it; refuse it on errors unless allowed."""
    from cl_detect.data.checked import checked_dataset
    from cl_detect.data.readers import read_dataset
    from cl_detect.data.selection import select_images

    options = {"class_names": list(spec.class_names)} if spec.class_names is not None else {}
    if spec.image_root is not None:
        options["image_root"] = spec.image_root
    dataset = read_dataset(spec.path, format=spec.format, split=spec.split, **options)
    dataset = select_images(dataset, spec.image_list, spec.max_images, spec.path)
    return checked_dataset(dataset, allow_data_errors, str(spec.path), check_images=spec.check_images)


def merge_vocabularies(datasets: list[DetectionDataset]) -> DetectionDataset:
    """One dataset over the union of the class lists, labels remapped (grounding records kept as they are)."""
    return merge_datasets(datasets, " + ".join(d.source for d in datasets), keep_grounding=True)


def split_by_kind(dataset: DetectionDataset) -> list[DetectionDataset]:
    """The non-empty parts of `dataset`: its detection records, then its grounding records.

    A mosaic cannot combine the two kinds (class labels vs. the image's own phrases), so each
    kind trains as its own dataset; `MixingSampler` draws them in proportion to their size."""
    kinds = ([r for r in dataset.records if not r.is_grounding], [r for r in dataset.records if r.is_grounding])
    return [DetectionDataset(records, dataset.vocabulary, dataset.source, dataset.image_root)
            for records in kinds if records] or [dataset]


def training_set(datasets: list[DetectionDataset], negatives: str, config: TrainConfig,
                 extras: list[tuple[DetectionDataset, float]] = ()):
    """(dataset, sampler) for `train_one_task` from one or more datasets; with `class_balanced`,
    each dataset's images are repeated by their LVIS repeat factors (from its own class counts).
    `extras` are (dataset, share of each epoch's draws) pairs from methods (`mix`), as in `cl-detect run`."""
    import numpy as np

    from cl_detect.data.loader import TrainDataset
    from cl_detect.data.sampling import MixedDataset, MixingSampler, RepeatFactorSampler, repeat_factors

    if negatives == "union":
        datasets = [merge_vocabularies(datasets)]
    datasets = [part for dataset in datasets for part in split_by_kind(dataset)]
    parts = [TrainDataset(d, augment_config(config), num_texts=config.num_texts, seed=config.seed + i)
             for i, d in enumerate(datasets)]
    if any(share > 0 and len(d) for d, share in extras):
        return mix_in(parts, list(extras), config)
    if config.class_balanced:  # the parts lie one after another in MixedDataset, as their factors do here
        factors = np.concatenate([repeat_factors(d) for d in datasets])
        return MixedDataset(parts), RepeatFactorSampler(factors, seed=config.seed)
    return MixedDataset(parts), MixingSampler([len(p) for p in parts], seed=config.seed)


def build_model(config: PretrainConfig):
    """(ContinualModel, text encoder spec, transfer report summary or None)."""
    from cl_detect.models.checkpoint import FORMAT, read_model_file, stored_detector_config
    from cl_detect.models.registry import create_detector
    from cl_detect.models.text_encoders import create_text_encoder
    from cl_detect.models.yolo_world import YOLOWorldDetector

    init = read_model_file(config.init_checkpoint) if config.init_checkpoint else None
    spec = config.text_encoder or (init or {}).get("text_encoder_spec")
    state, architecture = None, None
    if isinstance(init, dict) and init.get("format") == FORMAT:
        state, architecture = init["detector"], stored_detector_config(init)
    elif init is not None:
        from cl_detect.models.official import load_official_checkpoint
        with torch.random.fork_rng():  # its random init must not shift the seeded init of what is re-initialised
            official, official_text = load_official_checkpoint(init, device="cpu")
        state, architecture = official.state_dict(), official.config
        spec = spec or _official_text_spec(official_text, config.init_checkpoint)
    if spec is None:
        raise ValueError("text_encoder is required: name one (e.g. minilm, clip:ViT-B-32:openai); only a cl_detect "
                         "init_checkpoint, or an official one holding its CLIP text tower, brings its own")
    torch.manual_seed(config.train.seed)
    text_encoder = create_text_encoder(spec)
    if config.detector is None and architecture is not None:  # the checkpoint's own architecture
        # its backbone weights come from the checkpoint: timm's pretrained ones would be downloaded to be overwritten
        detector = YOLOWorldDetector(dataclasses.replace(architecture, text_dim=text_encoder.dim,
                                                         pretrained_backbone=False))
    else:
        kwargs = {"text_dim": text_encoder.dim, **config.detector_kwargs}
        detector = create_detector(config.detector or DEFAULT_DETECTOR, **kwargs)
    summary = None if state is None else transfer_weights(detector, state).summary()
    methods = [create_method(name, options) for name, options in config.methods.items()]
    return ContinualModel(detector, text_encoder, methods), spec, summary


# official text towers by width: CLIP ViT-B/32 (most checkpoints) and ViT-L/14-336 (the clip-large variants)
_CLIP_OF_WIDTH = {512: "ViT-B-32", 768: "ViT-L-14-336"}


def _official_text_spec(text_encoder, checkpoint: str) -> str | None:
    """The spec that rebuilds the CLIP text tower stored in an official checkpoint (None: it holds none)."""
    from cl_detect.models.text_encoders import ClipTextEncoder

    if isinstance(text_encoder, ClipTextEncoder) and text_encoder.dim in _CLIP_OF_WIDTH:
        return f"clip:{_CLIP_OF_WIDTH[text_encoder.dim]}:{checkpoint}"
    return None


def read_test_set(spec: DatasetSpec, allow_data_errors: bool) -> DetectionDataset:
    """A test set, read and checked before training (a bad one would otherwise surface after it)."""
    dataset = read_checked(spec, allow_data_errors)
    grounding = sum(record.is_grounding for record in dataset.records)
    if grounding:
        raise ValueError(f"test set {spec.name!r} ({spec.path}): {grounding} of its {len(dataset)} images are "
                         f"grounding records (phrases of their own caption, no class list), which COCO AP cannot "
                         f"score; list only detection data under test_sets")
    return dataset


def evaluate_all(model, test_sets: list[tuple[DatasetSpec, DetectionDataset]], image_size: int) -> dict:
    """AP statistics (floats only) per named test set, from `(spec, read_test_set(spec))` pairs."""
    from cl_detect.eval.detector_eval import evaluate_detector

    metrics = {}
    for spec, dataset in test_sets:
        if is_distributed():
            stats = evaluate_distributed(model.detector, model.text_encoder, dataset, image_size=image_size)
        else:
            stats = evaluate_detector(model.detector, model.text_encoder, dataset, image_size=image_size)
        metrics[spec.name] = {k: round(float(v), 5) for k, v in stats.items() if isinstance(v, float)}
        print(f"{spec.name}: AP {metrics[spec.name].get('AP', float('nan')):.4f} "
              f"AP50 {metrics[spec.name].get('AP50', float('nan')):.4f} ({len(dataset)} images)")
    return metrics


def pretrain(config: dict | str | Path, allow_data_errors: bool = False, resume: bool = True,
             command: str = "pretrain", extra_meta: dict | None = None) -> Path:
    """Train a detector as a config describes and write its checkpoint.

    Args:
        config: a `PretrainConfig` dict or a YAML file.
        allow_data_errors: train even when the dataset doctor finds errors.
        resume: continue an interrupted run from `out_dir/checkpoint.pt`.
        command: recorded in the checkpoint's meta ("pretrain" or "finetune").
        extra_meta: added to the checkpoint's meta (the protocol runner records what made a cached base).

    Returns:
        The written model checkpoint (`config.output`).
    """
    where = f"{config}: train.device" if not isinstance(config, dict) else "train.device"
    config = load_config(config)
    device = config.train.device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.startswith("cuda:"):
        raise ValueError(f"train.device {device!r} would put every torchrun process on one GPU; use 'cuda' or "
                         f"'auto' (each process takes GPU LOCAL_RANK)")
    # before the data is read; the device name itself was checked with the config
    check_device_available(device, where, fix="set train.device in the config")
    init_distributed("gloo" if device == "cpu" else None)  # NCCL cannot reduce CPU tensors
    # held from the run record to the last write, so a second process cannot overwrite either
    with only_process_in(Path(config.out_dir)):
        return _pretrain(config, allow_data_errors, resume, command, extra_meta)


def _pretrain(config: PretrainConfig, allow_data_errors: bool, resume: bool, command: str,
              extra_meta: dict | None) -> Path:
    """`pretrain`'s work (arguments as there), with `out_dir` held by this process."""
    check_same_run(config, resume)  # before the data is read: a refusal costs nothing
    if config.synthetic_world and is_main_process():
        _ensure_synthetic_world(config.synthetic_world)
    if is_distributed():
        torch.distributed.barrier()
    start = time.perf_counter()
    datasets = [read_checked(spec, allow_data_errors) for spec in config.datasets]
    test_sets = [(spec, read_test_set(spec, allow_data_errors)) for spec in config.test_sets]
    model, spec, transfer = build_model(config)
    trainable, total = model.parameter_counts()
    arch = model.detector.config
    built = config.detector or (f"the init checkpoint's architecture (deepen {arch.deepen}, widen {arch.widen}, "
                                f"backbone {arch.backbone})")
    print(f"{command}: {built} with text encoder {spec!r}; {trainable:,}/{total:,} parameters train; "
          f"{sum(len(d) for d in datasets)} training images")
    out_dir = Path(config.out_dir)
    task = TaskContext(0, command, tuple(n for d in datasets for n in d.vocabulary.names), datasets[0], out_dir,
                       image_size=config.train.image_size)
    record_run(config)
    model.hook("before_task", task)
    extras = checked_extras([pair for method in model.methods for pair in method.train_datasets(model, task)],
                            allow_data_errors)  # mix
    dataset, sampler = training_set(datasets, config.negatives, config.train, extras)
    result = train_one_task(model, dataset, config.train, out_dir, sampler=sampler, resume=resume)
    model.hook("after_task", task)
    image_size = config.eval_image_size or config.train.image_size
    metrics = evaluate_all(model, test_sets, image_size)
    meta = {"command": f"cl-detect {command}", "config": config.to_dict(), "machine": _machine(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_time_s": time.perf_counter() - start,
            "train_steps": result.steps, "images_per_s": result.images_per_s, "transfer": transfer,
            "final_metrics": metrics, **(extra_meta or {})}
    output = Path(config.output)
    model.hook("fold_into_detector")  # the plain detector layout, as load_model reads it
    if is_main_process():
        from cl_detect.models.checkpoint import save_model
        trained_text = any(p.requires_grad for p in model.text_encoder.parameters())
        text_state = model.text_encoder.state_dict() if trained_text else None
        save_model(output, model.detector, spec, meta=meta, text_encoder_state=text_state)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "metrics.json", json.dumps(meta, indent=2, default=str) + "\n")
        print(f"wrote {output} and {out_dir / 'metrics.json'} ({meta['wall_time_s']:.0f} s)")
    barrier()  # under torchrun: every rank returns a path that rank 0 has written
    return output


_WORLD_COUNTS = {"num_base_train": ("base", "train"), "num_test": ("base", "test"),
                 "num_task_train": ("task1", "train")}


def _ensure_synthetic_world(options: dict) -> None:
    """Write the synthetic world when missing; refuse one written with other settings."""
    from cl_detect.data.synthetic import write_synthetic_world

    options = dict(options)
    path = Path(options.pop("path"))
    if not (path / "world.json").exists():
        write_synthetic_world(path, **options)
        return
    # never rewrite an existing world: other runs may be reading it
    world = json.loads((path / "world.json").read_text())
    found = {"seed": world["seed"], "image_size": world["image_size"], "num_tasks": len(world["task_order"])}
    for key, (split, subset) in _WORLD_COUNTS.items():
        found[key] = world["splits"].get(split, {}).get("counts", {}).get(subset, {}).get("images")
    differ = {k: (v, found[k]) for k, v in options.items() if k in found and found[k] != v}
    if differ:
        details = ", ".join(f"{k} {want} (found {have})" for k, (want, have) in differ.items())
        raise ValueError(f"{path} holds a synthetic world made with other settings: wanted {details}; "
                         f"delete it, or point synthetic_world.path and the dataset paths elsewhere")


def _machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{os.cpu_count()} CPUs"
    # the load average says how much the machine was shared, which the wall time depends on
    return (f"{platform.node()} ({platform.system()} {platform.machine()}, {device}, "
            f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}, "
            f"torch {torch.__version__})")


def finetune(config: dict | str | Path, allow_data_errors: bool = False, resume: bool = True) -> Path:
    """Fine-tune a checkpoint on one task: `pretrain` with `init_checkpoint` required and one dataset.

    The text encoder defaults to the checkpoint's; `methods` picks what trains
    (e.g. `{finetune: {parts: head}}`). Continual sequences of tasks belong to `cl-detect run`.

    Args:
        config: a `PretrainConfig` dict or a YAML file.
        allow_data_errors: train even when the dataset doctor finds errors.
        resume: continue an interrupted run.

    Returns:
        The written model checkpoint.
    """
    parsed = load_config(config)
    if not parsed.init_checkpoint:
        raise ValueError("finetune needs init_checkpoint (the model to start from); "
                         "use `cl-detect pretrain` to train from scratch")
    if len(parsed.datasets) != 1:
        raise ValueError(f"finetune trains one task: list exactly one dataset, got {len(parsed.datasets)}")
    return pretrain(parsed.to_dict(), allow_data_errors=allow_data_errors, resume=resume, command="finetune")
