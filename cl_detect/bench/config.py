"""`RunConfig`: one continual protocol plus how to train and evaluate it, read from YAML.

A protocol file is merged over `experiments/defaults.yaml` *shallowly*: a
top-level key of the experiment replaces the default, except that mapping
values (`train`, `eval`, `method_options`, `base_model`, any mapping) are merged one level (the
experiment's keys win). There is no inheritance chain, no `_base_`, no
registry strings. `${VAR}` in any string is read from the environment
(`${CL_DETECT_SHARED}` falls back to the shared folder beside the checkout,
`${data_root}` is the protocol's `data_root`);
relative data paths are joined to `data_root`, and a relative `data_root` or
checkpoint path is taken from the current directory.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cl_detect._config_keys import check_image_size, check_keys_and_types, check_names, check_synthetic_world
from cl_detect._shared import expand_variables
from cl_detect._yaml import load_yaml
from cl_detect.engine.config import TrainConfig

DEFAULTS_PATH = Path(__file__).resolve().parents[2] / "experiments" / "defaults.yaml"
RETENTION_PROTOCOLS = ("coco", "lvis", "lvis-fixed")
# A run writes `<protocol>/<label>_seed<seed>.json` and `work/<label>_seed<seed>/task<i>_<task>/`;
# file systems allow 255 bytes per name, so names stay well below that.
MAX_NAME_BYTES = 200


@dataclass
class DataSpec:
    """Where one dataset is and how to read it.

    Args:
        path: annotation file or dataset folder (relative paths are joined to `data_root`).
        format: reader format (`cl_detect.data.readers.FORMATS`); None guesses it.
        split: split to read (YOLO train/valid/test, COCO `instances_<split>`); None reads all.
        image_root: folder the annotation's image paths are relative to (LVIS: the COCO
            image folder); None lets the reader find it.
        image_list: keep only the images named in this file (a csv with a `filename`
            column, or one file name per line), e.g. Raccoon's `test_labels.csv`.
        max_images: keep at most this many images (a fixed-seed random subset).
        class_names: VOC only: the class list in label order. VOC files do not store one, so
            by default it is the sorted names found in the split's xml files, which differ
            between splits when one lacks a class; give the same list to a task's train and test.
    """

    path: str
    format: str | None = None
    split: str | None = None
    image_root: str | None = None
    image_list: str | None = None
    max_images: int | None = None
    class_names: list[str] | None = None

    def __post_init__(self):
        check_names(self.class_names, str(self.path), "class_names")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"{self.path}: max_images must be 1 or more, got {self.max_images}; leave it out to "
                             f"keep every image")


@dataclass
class TaskSpec:
    """One task of the sequence.

    Args:
        name: task name (a matrix column).
        train, test: the task's data.
        prompts: one text per class used for training and testing (default: the class names).
    """

    name: str
    train: DataSpec
    test: DataSpec
    prompts: list[str] | None = None

    def __post_init__(self):
        check_names(self.prompts, f"task {self.name!r}")


@dataclass
class RetentionSpec:
    """A set that measures what the base model knew (zero-shot COCO, LVIS, ...).

    Args:
        name: set name ("coco" and "lvis" also give ZCOCO / ZLVIS).
        data: one or more datasets with the same class names; several are merged
            (duplicate images dropped), which `lvis` protocols do not allow.
        protocol: "coco", "lvis" (300 dets/img) or "lvis-fixed" (Fixed AP).
        prompts: one text per class (default: the class names), or a prompt file (.json or
            .txt, joined to data_root unless absolute) read as `data check --texts` reads it,
            taking the first text of each class: YOLO-World's `lvis_v1_class_texts.json` gives
            the prompts it evaluates LVIS with. Prompts may repeat here (they are not trained).
    """

    name: str
    data: list[DataSpec]
    protocol: str = "coco"
    prompts: list[str] | str | None = None

    def __post_init__(self):
        if not self.data:
            raise ValueError(f"retention set {self.name!r}: data is empty; give a dataset (a path or "
                             f"{{path, format, ...}}) or a list of datasets with the same class names")
        if isinstance(self.prompts, str) and not self.prompts.lower().endswith((".json", ".txt")):
            raise ValueError(f"retention set {self.name!r}: prompts is the string {self.prompts!r}; give a list, "
                             f"one prompt per class, or a prompt file ending in .json or .txt")
        if not isinstance(self.prompts, str):
            check_names(self.prompts, f"retention set {self.name!r}", allow_repeats=True)
        if self.protocol not in RETENTION_PROTOCOLS:
            raise ValueError(f"retention set {self.name!r}: protocol must be one of {RETENTION_PROTOCOLS}, "
                             f"got {self.protocol!r}")
        if self.protocol != "coco" and len(self.data) != 1:
            raise ValueError(f"retention set {self.name!r}: LVIS evaluation reads one LVIS json; "
                             f"got {len(self.data)} data entries")


# `base_model.pretrain`'s train settings when the protocol does not set them (prepare.base_pretrain_config)
BASE_PRETRAIN_TRAIN = {"epochs": 12, "batch_size": 16, "image_size": 96, "lr": 2e-3, "num_texts": 16,
                       "warmup_epochs": 1.0, "close_mosaic_epochs": 1, "device": "auto", "amp": True, "log_every": 20}


@dataclass
class BaseModelSpec:
    """The model every run starts from.

    Args:
        checkpoint: a cl_detect or official YOLO-World checkpoint.
        text_encoder: text encoder spec (`create_text_encoder`); None uses the checkpoint's.
        pretrain: settings for `prepare.base_pretrain_config` when the checkpoint is missing and the
            protocol can make it (synthetic only): detector name, epochs, batch size, lr, ...
    """

    checkpoint: str
    text_encoder: str | None = None
    pretrain: dict | None = None

    def __post_init__(self):
        if self.pretrain is not None and not isinstance(self.pretrain, dict):
            raise ValueError(f"base_model pretrain must be a mapping of settings (detector, epochs, ...), "
                             f"got {self.pretrain!r}")
        if self.pretrain:  # read only when the checkpoint is missing: a misspelt key would wait until then
            settings = {key: value for key, value in self.pretrain.items() if key != "detector"}
            check_keys_and_types(TrainConfig, settings, "base_model pretrain setting(s) (detector or train settings)")
            try:  # ranges too (lr: -1 waited until pretraining started)
                TrainConfig(**{**BASE_PRETRAIN_TRAIN, **settings})
            except ValueError as error:
                raise ValueError(f"base_model pretrain: {error}") from None


@dataclass
class EvalSettings:
    """Inference settings of every evaluation.

    Args:
        image_size: letterbox size.
        batch_size: images per forward pass.
        backend: COCO backend, "fast" or "pycocotools".
        num_workers: loader processes.
        compile: run the stage's fused detector through torch.compile
            (`cl_detect.models.fuse.compile_for_inference`). Each distinct prompt count
            and image size compiles once per run (about 40 s on a CPU for S), and later
            stages reuse it, so it pays off on large retention sets such as COCO val.
    """

    image_size: int = 640
    batch_size: int = 16
    backend: str = "fast"
    num_workers: int = 0
    compile: bool = False

    def __post_init__(self):
        check_image_size(self.image_size, "eval image_size")
        if self.backend not in ("fast", "pycocotools"):
            raise ValueError(f"eval backend must be 'fast' or 'pycocotools', got {self.backend!r}")
        if self.batch_size < 1:
            raise ValueError(f"eval batch_size must be >= 1, got {self.batch_size}")


@dataclass
class RunConfig:
    """A resolved protocol: tasks, retention sets, base model, training and evaluation.

    Args:
        name: protocol name (names the results folder).
        tasks: the task sequence.
        base_model: the starting model.
        retention: retention sets evaluated after every task.
        data_root: folder that relative data paths are joined to.
        description: one line shown in logs.
        train: `TrainConfig` fields for every task.
        eval: inference settings.
        methods: runs when `--methods` is not given ("a+b" composes); None = every registered method.
        method_options: method name -> config fields.
        seeds: seeds when `--seeds` is not given.
        synthetic_world: `write_synthetic_world` arguments; when given, the world is written
            to `data_root` if its `world.json` is missing.
        label: names the result files and the table row instead of the methods joined with
            '+' (baseline files: e.g. head-only fine-tuning is `finetune` with other options).
        joint: the joint-training upper bound: train once on the union of all tasks, then
            evaluate (that evaluation fills every row after the base row).
        allow_data_errors: train even when the dataset doctor finds errors in a task's
            training set (default: refuse, printing the report).
    """

    name: str
    tasks: list[TaskSpec]
    base_model: BaseModelSpec
    retention: list[RetentionSpec] = field(default_factory=list)
    data_root: str = "."
    description: str = ""
    train: dict = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)
    methods: list[str] | None = None
    method_options: dict[str, dict] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    synthetic_world: dict | None = None
    label: str | None = None
    joint: bool = False
    allow_data_errors: bool = False

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"protocol name {self.name!r} names the results folder OUT/<name>/: give a non-empty "
                             f"name without '/'")
        if not self.tasks:
            raise ValueError(f"protocol {self.name!r} has no tasks")
        if not isinstance(self.seeds, list) or not all(type(seed) is int and seed >= 0 for seed in self.seeds):
            raise ValueError(f"protocol {self.name!r}: seeds must be a list of integers (0 or more), e.g. [0, 1, 2], "
                             f"got {self.seeds!r}")
        names = [t.name for t in self.tasks] + [r.name for r in self.retention]
        if len(set(names)) != len(names):
            raise ValueError(f"protocol {self.name!r}: task and retention set names must be unique, got {names}")
        self.train_config()  # fail at load time on a bad training field
        from cl_detect.methods import create_method
        for name, options in self.method_options.items():
            try:  # a misspelt method or option fails now, not after a task has trained
                create_method(name, options)
            except ValueError as err:
                raise ValueError(f"protocol {self.name!r} method_options: {err}") from None
        if self.methods is not None:
            if not isinstance(self.methods, list) or not all(isinstance(spec, str) for spec in self.methods):
                raise ValueError(f"protocol {self.name!r}: methods must be a list of method lists, e.g. "
                                 f"[finetune, lora+distill], or null for every method; got {self.methods!r}")
            try:
                split_method_specs(self.methods, self.method_options)
            except ValueError as err:
                raise ValueError(f"protocol {self.name!r} methods: {err}") from None
        if self.synthetic_world is not None:
            check_synthetic_world(self.synthetic_world)
        if self.label is not None and (not self.label or "/" in self.label or "+" in self.label):
            raise ValueError(f"label {self.label!r} must be a non-empty name without '/' or '+'")
        file_names = [("name", self.name), ("label", self.label)] + [("task name", t.name) for t in self.tasks]
        for setting, value in file_names:
            if value is not None and len(value.encode()) > MAX_NAME_BYTES:
                raise ValueError(f"protocol {setting} {value[:40]!r}... is {len(value.encode())} bytes long; it names "
                                 f"the result files (<label>_seed<seed>.json) and work folders, and file names are "
                                 f"limited to 255 bytes: give a {setting} of at most {MAX_NAME_BYTES} bytes")

    def run_label(self, method_names: list[str]) -> str:
        """Name of a run's result file and table row."""
        return self.label or "+".join(method_names)

    def train_config(self, seed: int = 0) -> TrainConfig:
        """The `TrainConfig` of every task, seeded."""
        check_keys_and_types(TrainConfig, self.train, "train setting(s)")
        return TrainConfig(**{**self.train, "seed": seed})

    def resolve_path(self, path: str) -> Path:
        """A data path joined to `data_root` unless absolute."""
        return Path(self.data_root) / path

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Build from a merged mapping; unknown keys are errors."""
        check_keys_and_types(cls, data, "protocol key(s)")
        data = dict(data)
        for key in ("base_model", "train", "eval", "method_options"):
            if key in data and not isinstance(data[key], dict):
                empty = ("" if data[key] is not None else " (an empty `base_model:` is null: give base_model: "
                         "{checkpoint: PATH})" if key == "base_model" else
                         f" (an empty `{key}:` is null: leave it out to keep the defaults)")
                raise ValueError(f"{key} must be a mapping (`key: value` lines or {{key: value}}), got "
                                 f"{data[key]!r}{empty}")
        if "base_model" not in data:
            raise ValueError("the protocol has no base_model: add base_model: {checkpoint: PATH} (a cl_detect or "
                             "official YOLO-World checkpoint)")
        check_keys_and_types(BaseModelSpec, data["base_model"], "base_model key(s)")
        data["tasks"] = [_task_spec(t) for t in data.get("tasks") or []]
        data["retention"] = [_retention_spec(r) for r in data.get("retention") or []]
        data["base_model"] = BaseModelSpec(**data["base_model"])
        check_keys_and_types(EvalSettings, data.get("eval"), "eval setting(s)")
        data["eval"] = EvalSettings(**(data.get("eval") or {}))
        return cls(**data)


def split_method_specs(specs: list[str], method_options: dict | None = None) -> list[list[str]]:
    """Method lists of specs such as "lora+distill".

    Raises:
        ValueError: an unknown method (listing the registered ones), or a list whose methods cannot
            be combined (`methods.composed`: a method twice, two trainers, ...), with the list named.
    """
    from cl_detect.methods import composed, create_method, list_methods
    runs = [[name.strip() for name in spec.split("+")] for spec in specs]
    unknown = sorted({name for names in runs for name in names} - set(list_methods()))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {', '.join(list_methods())}")
    for names in (names for names in runs if len(names) > 1):  # a composition that cannot work fails every seed
        try:
            composed([create_method(name, (method_options or {}).get(name)) for name in names])
        except ValueError as err:
            raise ValueError(f"method list {'+'.join(names)!r}: {err}") from None
    return runs


def _data_spec(value: dict | str, where: str = "") -> DataSpec:
    if isinstance(value, str):
        return DataSpec(path=value)
    if not isinstance(value, dict) or "path" not in value:
        raise ValueError(f"{where + ': ' if where else ''}a dataset entry is a path or a mapping with a 'path', "
                         f"got {value!r}")
    check_keys_and_types(DataSpec, value, f"dataset key(s) of {value['path']!r}:")
    return DataSpec(**value)


def _task_spec(value) -> TaskSpec:
    missing = [key for key in ("name", "train", "test") if not isinstance(value, dict) or key not in value]
    if missing:
        raise ValueError(f"task {value!r} lacks {', '.join(missing)}: each task is {{name, train, test, prompts}}")
    check_keys_and_types(TaskSpec, value, f"key(s) of task {value['name']!r}:")
    where = f"task {value['name']!r}"
    return TaskSpec(name=value["name"], train=_data_spec(value["train"], f"{where} train"),
                    test=_data_spec(value["test"], f"{where} test"),
                    prompts=value.get("prompts"))


def _data_specs(value, where: str) -> list[DataSpec]:
    return [_data_spec(v, where) for v in value] if isinstance(value, list) else [_data_spec(value, where)]


def _retention_spec(value) -> RetentionSpec:
    missing = [key for key in ("name", "data") if not isinstance(value, dict) or key not in value]
    if missing:
        raise ValueError(f"retention set {value!r} lacks {', '.join(missing)}: each retention set is "
                         f"{{name, data, protocol, prompts}}")
    check_keys_and_types(RetentionSpec, value, f"key(s) of retention set {value['name']!r}:")
    return RetentionSpec(name=value["name"], data=_data_specs(value["data"], f"retention set {value['name']!r}"),
                         protocol=value.get("protocol", "coco"),
                         prompts=value.get("prompts"))


def merge_shallow(defaults: dict, experiment: dict) -> dict:
    """Experiment keys replace default keys; mapping values are merged one level deep."""
    merged = dict(defaults)
    for key, value in experiment.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            merged[key] = {**defaults[key], **value}
        else:
            merged[key] = value
    return merged


def _read_settings(path: str | Path, what: str) -> dict:
    """One YAML file of protocol settings; not a mapping, or a top-level key `RunConfig` lacks, is an
    error naming this file (after merging, the message could only name the protocol file)."""
    settings = load_yaml(Path(path).read_text()) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: {what} holds one mapping of settings (`key: value` lines), got "
                         f"{type(settings).__name__}")
    check_keys_and_types(RunConfig, settings, f"protocol key(s) in {path}:")
    return settings


def load_run_config(path: str | Path, defaults_path: str | Path | None = DEFAULTS_PATH,
                    overrides: dict | None = None, override_files: list[str | Path] = ()) -> RunConfig:
    """Read a protocol file, merged over the defaults file, with `${VAR}` expanded.

    Args:
        path: the experiment YAML.
        defaults_path: the defaults YAML (None: no defaults).
        overrides: a last shallow merge (command-line settings).
        override_files: YAML files merged in order after the experiment and before `overrides`
            (`--override`, e.g. a baseline file).

    Returns:
        The resolved `RunConfig`.
    """
    defaults = _read_settings(defaults_path, "a defaults file") if defaults_path else {}
    merged = merge_shallow(defaults, _read_settings(path, "a protocol file"))
    for override in override_files:
        merged = merge_shallow(merged, _read_settings(override, "an override file"))
    merged = merge_shallow(merged, overrides or {})
    environment = dict(os.environ)
    # ${data_root} lets method options (mix, replay) name files inside the protocol's data
    environment["data_root"] = str(expand_variables(merged.get("data_root", "."), environment))
    where = f"{path} (with {', '.join(map(str, override_files))})" if override_files else str(path)
    try:
        return RunConfig.from_dict(expand_variables(merged, environment))
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def save_resolved(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (kept beside the results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
