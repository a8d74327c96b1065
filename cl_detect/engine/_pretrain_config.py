"""The YAML config of `cl-detect pretrain` / `cl-detect finetune` (`PretrainConfig`).

    detector: yolo_world_v2_t          # create_detector name (default: init_checkpoint's architecture)
    detector_kwargs: {}                # e.g. {backbone: "timm:resnet18"}; text_dim defaults to the encoder's
    text_encoder: minilm               # create_text_encoder spec (finetune: defaults to the checkpoint's)
    init_checkpoint: null              # loaded through transfer_weights (report printed)
    synthetic_world: {path: cache/synthetic_world, seed: 0}   # optional: written if missing
    datasets: [{path: cache/synthetic_world/base/train.json}]
    negatives: union                   # or "own" (see engine/pretrain.py)
    test_sets: [{name: base, path: cache/synthetic_world/base/test.json}]
    methods: {finetune: {}}            # method name -> options
    train: {epochs: 30, batch_size: 16, image_size: 96}       # TrainConfig fields
    output: cache/models/synthetic_base.pt
    out_dir: runs/pretrain/synthetic_base

Relative paths are taken from the current directory (run from the repository root);
`${VAR}` in any string is read from the environment (an unset one is an error), and
`${CL_DETECT_SHARED}` falls back to the shared folder (`cl_detect._shared.shared_dir`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from cl_detect._config_keys import check_image_size, check_keys_and_types, check_names, check_synthetic_world
from cl_detect._shared import expand_variables
from cl_detect.engine.config import TrainConfig
from cl_detect.methods import create_method, method_classes


@dataclass
class DatasetSpec:
    """One dataset to read (any format `read_dataset` supports).

    Args:
        path: annotation file or dataset folder.
        format: reader name; None guesses it.
        split: split to read (YOLO/VOC/COCO folder); None reads everything.
        name: name of a test set in the metrics (default: the file stem).
        check_images: let the doctor open every image (slow for large sets).
        class_names: VOC only: the class list in label order (VOC stores none: by default it is
            the sorted names in the split's xml files; give train and test sets the same list).
        image_root: folder the annotation's image paths are relative to (LVIS: the COCO image
            folder); None lets the reader find it.
        image_list: keep only the images named in this file (a csv with a `filename` column, or
            one file name per line), e.g. Raccoon's `train_labels.csv`.
        max_images: keep at most this many images (a fixed-seed random subset).
        As in a protocol's dataset entries (`bench.config.DataSpec`), but paths are used as given.
    """

    path: str
    format: str | None = None
    split: str | None = None
    name: str = ""
    check_images: bool = True
    class_names: list[str] | None = None
    image_root: str | None = None
    image_list: str | None = None
    max_images: int | None = None

    def __post_init__(self):
        self.path = expand_variables(self.path)  # an unset ${VAR} is an error, not a literal path
        check_names(self.class_names, self.path, "class_names")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"{self.path}: max_images must be 1 or more, got {self.max_images}; leave it out to "
                             f"keep every image")
        for key in ("image_root", "image_list"):  # readers would fail later naming no entry
            if getattr(self, key) is not None and not Path(getattr(self, key)).exists():
                raise ValueError(f"{self.path}: {key} {getattr(self, key)!r} does not exist; fix the path")
        if not self.name:
            self.name = Path(self.path).stem


DEFAULT_DETECTOR = "yolo_world_v2_s"


@dataclass
class PretrainConfig:
    """Everything `pretrain()` needs; see the module docstring for the YAML form.

    Args:
        datasets: training datasets (each with its own vocabulary).
        output: the model checkpoint to write.
        out_dir: logs, the trainer checkpoint and metrics.json.
        detector: `create_detector` name; None: the init checkpoint's own architecture, or
            `DEFAULT_DETECTOR` without a checkpoint.
        detector_kwargs: its keyword arguments (text_dim defaults to the text encoder's width);
            with an init checkpoint they need `detector`.
        text_encoder: `create_text_encoder` spec; None takes the init checkpoint's.
        init_checkpoint: cl_detect or official checkpoint to start from.
        synthetic_world: `write_synthetic_world` keyword arguments plus `path`; written when missing.
        negatives: "union" (merge the vocabularies) or "own" (per dataset).
        test_sets: evaluated (COCO AP) after training.
        methods: method name -> options (default: full fine-tuning).
        train: the `TrainConfig`.
        eval_image_size: evaluation input size (default: train.image_size).
    """

    datasets: list[DatasetSpec]
    output: str
    out_dir: str
    detector: str | None = None
    detector_kwargs: dict = field(default_factory=dict)
    text_encoder: str | None = None
    init_checkpoint: str | None = None
    synthetic_world: dict | None = None
    negatives: str = "union"
    test_sets: list[DatasetSpec] = field(default_factory=list)
    methods: dict = field(default_factory=lambda: {"finetune": {}})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_image_size: int | None = None

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("datasets is empty: list at least one training dataset")
        if self.eval_image_size is not None:
            check_image_size(self.eval_image_size, "eval_image_size")
        if self.detector_kwargs and self.detector is None and self.init_checkpoint is not None:
            raise ValueError(f"detector_kwargs {self.detector_kwargs} need a detector name: without one the "
                             f"architecture is the init checkpoint's own")
        for name in self.methods:
            kept_apart = method_classes(name)[1].kept_outside_detector
            if kept_apart:
                raise ValueError(f"method {name!r} keeps what it learns ({kept_apart}) outside the detector's "
                                 f"weights, which the detector checkpoint that pretrain/finetune write cannot "
                                 f"hold; run it with `cl-detect run`")
        if self.negatives not in ("union", "own"):
            raise ValueError(f"negatives must be 'union' or 'own', got {self.negatives!r}")
        if self.synthetic_world is not None:
            check_synthetic_world(self.synthetic_world, also=("path",))
            if "path" not in self.synthetic_world:
                raise ValueError("synthetic_world needs a 'path'")
        names = [spec.name for spec in self.test_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"test set names must be unique, got {names}; set 'name' on each")

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainConfig":
        """Build from plain YAML data, rejecting unknown keys with the valid ones listed."""
        check_keys_and_types(cls, data, "config key(s)")
        data = expand_variables(dict(data))  # every path (output, init_checkpoint, a method's data), as in protocols
        check_keys_and_types(TrainConfig, data.get("train"), "train setting(s)")
        data["train"] = TrainConfig(**(data.get("train") or {}))
        for key in ("datasets", "test_sets"):
            specs = data.get(key) or []
            if not isinstance(specs, list):
                raise ValueError(f"{key} must be a list of datasets ({{path, format, split, ...}} each), got {specs!r}")
            for index, spec in enumerate(specs):
                check_keys_and_types(DatasetSpec, spec, f"key(s) of {key} entry {index}:")
            data[key] = [DatasetSpec(**spec) for spec in specs]
        methods = data.get("methods") or {"finetune": {}}
        if not isinstance(methods, dict):
            raise ValueError(f"methods must be a mapping of method name -> options, e.g. {{finetune: {{}}}}, "
                             f"got {methods!r}")
        for name, options in methods.items():
            create_method(name, options)  # a misspelt option fails now, not after the data are read
        data["methods"] = {name: dict(options or {}) for name, options in methods.items()}
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
