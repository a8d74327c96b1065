"""Methods and how they compose around the shared detector.

A run lists one or more methods by name. `ContinualModel` owns the detector,
the text encoder and the loss, and calls each method's hooks:

- `mark_trainable(model)`: exactly one *trainer* method (finetune, lora, prompt,
  reparam) decides which parameters train; when none is listed, `finetune`
  (full fine-tuning) is added. Regularisers (distill, replay, mix, wise, ewc)
  add losses, data or post-processing on top.
- `text_embeddings(model, texts)`: a method may supply the class embeddings
  (prompt tuning owns them as parameters).
- `extra_losses(model, batch, output, text)`: added to the returned dict; every
  key starting with "loss_" is summed into "loss".
- `train_datasets(model, task)`: datasets mixed into training with ratios (replay, mix);
  `data_share()` declares their total share up front, so shares summing to 1 or more are
  rejected when the model is built, not at the task where every method first adds data.
- `before_task(model, task)` / `after_task(model, task)`: task-boundary hooks.
- `parameter_lr_multipliers()`: per-parameter LR multipliers (name prefix -> multiplier).
State a method owns (teacher, buffer, prompts, adapters) lives in its own
submodules/buffers or in `extra_state`, so it goes into checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cl_detect.data.preprocess import images_to_device
from cl_detect.engine.losses import YOLOWorldLoss
from cl_detect.models.text_encoders import weights_version


@dataclass
class TaskContext:
    """What a method learns about the task at a boundary.

    Args:
        index: 0-based position of the task in the sequence.
        name: task name.
        vocabulary: class names of the task.
        train_dataset: the task's `DetectionDataset` (records + vocabulary).
        out_dir: folder for anything the method writes (adapters, embeddings, sweeps).
        extras: protocol-level information (e.g. general vocabulary for distillation).
        image_size: the training input size (methods that run the detector on the task's
            images themselves, like ewc's Fisher pass, default to it).
    """

    index: int
    name: str
    vocabulary: tuple[str, ...]
    train_dataset: Any = None
    out_dir: Any = None
    extras: dict = field(default_factory=dict)
    image_size: int | None = None


class Method(nn.Module):
    """Base class of every method; all hooks default to doing nothing."""

    name = "method"
    is_trainer = False  # decides which parameters train
    skips_training = False  # zero-shot baseline: tasks are evaluated but never trained
    incompatible_with: tuple[str, ...] = ()
    # what the method learns outside the detector's weights (empty: nothing), which a plain
    # detector checkpoint cannot hold; pretrain/finetune refuse such methods
    kept_outside_detector = ""
    # how the tensors it trains are dropped after each task and started afresh under the same names
    # (empty: they carry over), with the setting to change; wise and ewc, which keep a copy of each
    # tensor by name across tasks, refuse a model with such a method
    renews_trained_tensors = ""
    # how each task trains new tensors of its own, under new names, the earlier tasks' kept frozen (empty:
    # the same tensors train on every task), with the setting to change; ewc's penalty, which reaches
    # only tensors that trained before, would be 0, and wise needs its anchor taken after they are added
    trains_new_tensors_each_task = ""
    # how each task start installs class scores for that task's classes only, which a copy of the detector
    # taken before them cannot give (empty: the detector scores any prompt); distill refuses the orders
    # in which its teacher would be such a copy (it would score the new classes as absent)
    adds_class_heads_each_task = ""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def incompatibility_reason(self) -> str:
        """Why `incompatible_with` lists what it lists (shown in the error)."""
        return "see docs/methods.md"

    def check_combination(self, methods: list["Method"]) -> None:
        """Raise ValueError when this method cannot run beside `methods` (the whole list in order,
        itself included) as they are configured; called wherever a list is checked
        (`check_composition`: when a protocol is read and when a model is built)."""

    def trains_text_tower(self) -> bool:
        """Whether this trainer trains text-tower parameters in some task, including ones it adds only
        at a task start (lora's per-task adapters), so that hooks running before it can tell."""
        return False

    def setup(self, model: "ContinualModel") -> None:
        """Called once when the model is assembled (build teachers, inject adapters...)."""

    def mark_trainable(self, model: "ContinualModel") -> None:
        """Trainer methods set `requires_grad` on the parameters that train."""

    def parameter_lr_multipliers(self) -> dict[str, float]:
        return {}

    def optimizer_parameter_names(self, model: "ContinualModel") -> set[str]:
        """Parameters frozen now that will train later (progressive unfreezing)."""
        return set()

    def text_embeddings(self, model: "ContinualModel", texts: list[list[str]]) -> torch.Tensor | None:
        return None

    def extra_losses(self, model: "ContinualModel", batch: dict, output, text: torch.Tensor) -> dict:
        return {}

    def train_datasets(self, model: "ContinualModel", task: TaskContext) -> list[tuple[Any, float]]:
        return []

    def data_share(self) -> float:
        """Share of each epoch's draws `train_datasets` may take at most (checked when composed)."""
        return 0.0

    def before_task(self, model: "ContinualModel", task: TaskContext) -> None:
        pass

    def after_task(self, model: "ContinualModel", task: TaskContext) -> None:
        pass

    def before_epoch(self, model: "ContinualModel", epoch: int) -> None:
        pass

    def after_step(self, model: "ContinualModel", step: int) -> None:
        pass

    def fold_into_detector(self, model: "ContinualModel") -> None:
        """Give the detector its plain layout, what was learned folded in, before it is saved alone."""


def composed(methods: list[Method]) -> list[Method]:
    """The methods a model runs: `finetune` first when none of them is a trainer (regularisers alone
    fine-tune the whole detector), checked with `check_composition`."""
    if not any(m.is_trainer for m in methods):
        from cl_detect.methods.registry import create_method
        methods = [create_method("finetune")] + list(methods)
    check_composition(methods)
    return list(methods)


def check_composition(methods: list[Method]) -> None:
    """Reject combinations that cannot work together, with the reason."""
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"a method is listed twice: {names}; compose distinct methods, e.g. lora+distill")
    trainers = [m.name for m in methods if m.is_trainer]
    if len(trainers) > 1:
        raise ValueError(f"{' and '.join(trainers)} each decide which parameters train; list only one of them "
                         f"(combine a trainer with regularisers such as distill, replay, mix, wise, ewc)")
    for method in methods:
        clash = [n for n in names if n in method.incompatible_with]
        if clash:
            raise ValueError(f"{method.name} cannot be combined with {', '.join(clash)}: "
                             f"{method.incompatibility_reason()}")
    for method in methods:
        method.check_combination(list(methods))
    shares = {m.name: m.data_share() for m in methods if m.data_share() > 0}
    if sum(shares.values()) >= 1:
        listed = " + ".join(f"{name} {share:.2f}" for name, share in shares.items())
        raise ValueError(f"the data mixed into every epoch takes {listed} = {sum(shares.values()):.2f} of the "
                         f"draws; the task needs a share too, so lower these ratios until they sum below 1")


class ContinualModel(nn.Module):
    """The detector, its text encoder and loss, wrapped by a list of methods.

    `model(batch)` returns {"loss": total, "loss_cls": ..., ...}.
    """

    def __init__(self, detector: nn.Module, text_encoder: nn.Module, methods: list[Method],
                 criterion: YOLOWorldLoss | None = None):
        super().__init__()
        methods = composed(methods)
        self.detector = detector
        self.text_encoder = text_encoder
        self.criterion = criterion or YOLOWorldLoss(reg_max=detector.config.reg_max)
        self.methods = nn.ModuleList(methods)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._text_cache_version: tuple[int, int] | None = None  # of the text encoder's weights
        for method in self.methods:
            method.setup(self)
        self.mark_trainable()

    def method(self, name: str) -> Method | None:
        return next((m for m in self.methods if m.name == name), None)

    def mark_trainable(self) -> None:
        """Freeze everything, then let the trainer method unfreeze its parameters."""
        for param in self.parameters():
            param.requires_grad_(False)
        for method in self.methods:
            method.mark_trainable(self)

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter, float]]:
        """(name, parameter, LR multiplier) for every parameter that trains now or later."""
        multipliers: dict[str, float] = {}
        for method in self.methods:
            multipliers.update(method.parameter_lr_multipliers())
        later = set().union(*(m.optimizer_parameter_names(self) for m in self.methods))
        rows = []
        for name, param in self.named_parameters():
            if param.requires_grad or name in later:
                factor = next((f for prefix, f in multipliers.items() if name.startswith(prefix)), 1.0)
                rows.append((name, param, factor))
        return rows

    def text_tower_trains(self) -> bool:
        """Whether any text-tower parameter trains now or later (progressive unfreezing included), or a
        trainer says it will (`Method.trains_text_tower`: its parameters may not exist yet when a method
        listed before it asks)."""
        return any(m.trains_text_tower() for m in self.methods) or any(
            name.startswith("text_encoder.") for name, _, _ in self.named_trainable_parameters())

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the deployed model, each parameter counted once
        (frozen teachers kept by methods for training are left out)."""
        params = {id(p): p for n, p in self.named_parameters()
                  if ".teacher." not in n and ".teacher_text." not in n}.values()
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen towers stay in eval mode (BatchNorm/Dropout of frozen parts must not change)
        if not any(p.requires_grad for p in self.text_encoder.parameters()):
            self.text_encoder.eval()
        for method in self.methods:
            method.train(mode)  # methods keep their teachers in eval mode themselves
        # BatchNorm layers whose affine parameters are frozen keep their running statistics
        # (the official frozen-stage behaviour), so a frozen backbone stays the pretrained one
        for module in self.detector.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if not any(p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()
        return self

    def hook(self, name: str, *args) -> None:
        """Call hook `name` of every method in order.

        After `before_task` the trainer marks the trainable parameters again: methods
        may create parameters for the new task (prompts, adapters, class heads).
        """
        for method in self.methods:
            getattr(method, name)(self, *args)
        if name == "before_task":
            self.mark_trainable()

    def embed_texts(self, texts: list[list[str]]) -> torch.Tensor:
        """Per-image prompt lists (B x N) -> (B, N, D) embeddings."""
        for method in self.methods:
            text = method.text_embeddings(self, texts)
            if text is not None:
                return text
        flat = [t for image_texts in texts for t in image_texts]
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.text_encoder.parameters())
        if trains:
            unique = list(dict.fromkeys(flat))
            table = self.text_encoder(unique)
            index = {t: i for i, t in enumerate(unique)}
            rows = table[torch.tensor([index[t] for t in flat], device=table.device)]
        else:
            # a frozen tower: embed each distinct string once, until its weights change
            version = weights_version(self.text_encoder)
            if version != self._text_cache_version:
                self._text_cache.clear()
                self._text_cache_version = version
            missing = [t for t in dict.fromkeys(flat) if t not in self._text_cache]
            if missing:
                with torch.no_grad():
                    self._text_cache.update(zip(missing, self.text_encoder(missing)))
            rows = torch.stack([self._text_cache[t] for t in flat])
        return rows.reshape(len(texts), -1, rows.shape[-1])

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        device = next(self.detector.parameters()).device
        text = self.embed_texts(batch["texts"]).to(device)
        images = images_to_device(batch["images"], device)
        batch = {**batch, "images": images}  # methods' extra losses reuse the copied, converted images
        output = self.detector(images, text)
        targets = [batch[k].to(device, non_blocking=True) for k in ("gt_boxes", "gt_labels", "gt_mask")]
        losses = self.criterion(output.cls_logits, output.bbox_preds, output.bbox_dists, *targets)
        for method in self.methods:
            losses.update(method.extra_losses(self, batch, output, text))
        losses["loss"] = sum(v for k, v in losses.items() if k.startswith("loss_"))
        return losses
