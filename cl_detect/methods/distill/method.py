"""`distill`: keep the fine-tuned detector close to a frozen teacher.

The teacher is a deep copy of the detector taken before the first task (or
refreshed at every task start with `teacher="previous_task"`). It is frozen,
stays in eval mode when the model trains, and runs under `no_grad` (bf16
autocast on CUDA by default, see `teacher_precision`) on the batch's own
preprocessed images. Three losses:

- `loss_distill_cls`: Bernoulli KL between teacher and student class
  probabilities for the teacher's vocabulary (a general vocabulary such as the
  COCO or LVIS names, embedded once); optionally only at teacher-confident
  locations plus sampled negatives.
- `loss_distill_feat`: MSE between channel-normalised neck features per level.
- `loss_distill_dfl`: KL between DFL bin distributions at teacher-confident locations.

With a general vocabulary the student runs a second pass with those prompts
(the neck is text-conditioned, so its features for the task's prompts are not
comparable); without one, the main pass is reused and the teacher sees the
batch's prompts. The teacher's weights are part of the method's `state_dict`,
so checkpoints hold it and a resumed run distils from the same teacher.

When the text tower trains too (finetune's `train_text_encoder`, lora's "text"
part), the teacher gets a frozen copy of it (`teacher_text`, taken with the
teacher): the teacher embeds its prompts with that copy and the student with its
own training tower, so the tower's drift is distilled too.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from cl_detect.data.preprocess import images_to_device
from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.distill._losses import (
    class_logit_loss, confident_locations, dfl_loss, feature_loss, flatten_levels, sample_negatives)
from cl_detect.methods.distill._reference import ReferenceImages
from cl_detect.methods.distill.config import DistillConfig
from cl_detect.models.fuse import compile_for_inference, fused_copy
from cl_detect.models.precision import bf16_autocast


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with every parameter frozen, in eval mode."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher.eval()


def teacher_autocast(precision: str, device: torch.device):
    """The teacher's precision context: "bf16" and "auto" on CUDA autocast to bf16, "fp32"
    turns autocast off, "auto" on a CPU keeps the surrounding step's setting."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return bf16_autocast(device, cuda=True, cpu=precision == "bf16")


def read_vocabulary_file(path: str | Path) -> list[str]:
    """Names from a UTF-8 text file, one per line (blank lines and a byte order mark skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"distill vocabulary file {path} does not exist")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"distill vocabulary file {path} holds no names")
    return names


class DistillMethod(Method):
    """Distillation regulariser; see the module docstring."""

    def __init__(self, config: DistillConfig):
        super().__init__(config)
        self.teacher: nn.Module | None = None
        self.teacher_text: nn.Module | None = None  # a frozen copy of the text tower, only when it trains
        self.vocabulary: list[str] = []
        self.vocabulary_embeddings: torch.Tensor | None = None  # (V, D), the teacher's text
        self.reference = ReferenceImages(config.reference_images) if config.reference_images else None
        self._compiled_teacher = None  # with compile_teacher: built on first use, dropped when the teacher changes
        self._model: ContinualModel | None = None
        self.register_load_state_dict_pre_hook(self._before_load)

    def setup(self, model: ContinualModel) -> None:
        object.__setattr__(self, "_model", model)  # plain reference: registering it would make the tree cyclic
        self.teacher = frozen_copy(model.detector)
        if self.config.vocabulary_is_file:
            self.set_vocabulary(model, read_vocabulary_file(self.config.vocabulary))
        elif isinstance(self.config.vocabulary, list):
            self.set_vocabulary(model, self.config.vocabulary)

    def check_combination(self, methods: list[Method]) -> None:
        """Refuse orders in which the teacher is copied when it cannot score the task's classes.

        A trainer that adds class heads at each task start (the specialist) must run its `before_task`
        after a "base" teacher is copied (else the teacher is the student with an untrained classifier,
        and later tasks' classes are absent from it) and before a "previous_task" teacher is copied
        (else the teacher lacks the new task's classifier). A teacher that scores a class as absent
        (logit -30) pulls the student's scores of that class towards "never" at every location.
        """
        for method in methods:
            if not method.adds_class_heads_each_task:
                continue
            distill_first = methods.index(self) < methods.index(method)
            if self.config.teacher == "base" and not distill_first:
                raise ValueError(f"distill with teacher 'base' listed after {method.name}: the teacher would be "
                                 f"copied after {method.name} installs {method.adds_class_heads_each_task}, so "
                                 f"it would score the first task's classes with an untrained classifier and "
                                 f"every later task's classes as absent; list distill before {method.name}")
            if self.config.teacher == "previous_task" and distill_first:
                raise ValueError(f"distill with teacher 'previous_task' listed before {method.name}: at each task "
                                 f"start the teacher would be copied before {method.name} adds "
                                 f"{method.adds_class_heads_each_task}, so it would score the new task's classes "
                                 f"as absent and pull the student's scores of them towards 'never'; list "
                                 f"{method.name} before distill")

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.teacher, self.teacher_text):
            if frozen is not None:
                frozen.eval()  # BatchNorm statistics and dropout of the teacher never change
        return self

    def set_vocabulary(self, model: ContinualModel, names: list[str]) -> None:
        """Embed the teacher's vocabulary once with the (frozen) text encoder."""
        if list(names) == self.vocabulary:
            return
        with torch.no_grad():
            self.vocabulary_embeddings = model.text_encoder(list(names)).detach().float().cpu()
        self.vocabulary = list(names)

    def refresh_teacher(self, detector: nn.Module) -> None:
        """Make the teacher an exact copy of `detector` (weights and buffers)."""
        self._compiled_teacher = None
        state = detector.state_dict()
        if self.teacher is not None and self.teacher.state_dict().keys() == state.keys():
            self.teacher.load_state_dict(state)
        else:  # the detector changed structure (e.g. adapters injected after distill was set up)
            device = next(detector.parameters()).device
            self.teacher = frozen_copy(detector).to(device)

    def refresh_teacher_text(self, model: ContinualModel) -> None:
        """A frozen copy of the text tower when it trains (the student's text then moves too), else none."""
        if not model.text_tower_trains():
            self.teacher_text = None
        elif self.teacher_text is not None and self.teacher_text.state_dict().keys() == \
                model.text_encoder.state_dict().keys():
            self.teacher_text.load_state_dict(model.text_encoder.state_dict())
        else:
            self.teacher_text = frozen_copy(model.text_encoder)

    def before_task(self, model: ContinualModel, task: TaskContext) -> None:
        # task 0 too: a harness may load pretrained weights after assembling the model
        if task.index == 0 or self.config.teacher == "previous_task":
            self.refresh_teacher(model.detector)
            self.refresh_teacher_text(model)
        if isinstance(self.config.vocabulary, str) and not self.config.vocabulary_is_file:
            self.set_vocabulary(model, self._retention_vocabulary(task))

    def _retention_vocabulary(self, task: TaskContext) -> list[str]:
        name = self.config.vocabulary
        given = task.extras.get("general_vocabulary")
        if given is None:
            raise ValueError(f"distill vocabulary {name!r} names a retention set, but the task context has no "
                             f"extras['general_vocabulary']; pass names or a file instead")
        if isinstance(given, dict):
            if name not in given:
                raise ValueError(f"distill vocabulary {name!r} is not among the retention sets {sorted(given)}")
            return list(given[name])
        return list(given)

    def _before_load(self, module, state_dict, prefix, *args) -> None:
        """Give the teacher the layout the checkpoint's teacher has.

        A teacher copied after a trainer changed the detector's layout (lora's adapters, the
        specialist's heads) has that layout, but a freshly built model's teacher is copied at setup.
        The model's own load hooks have given the detector the checkpoint's layout by now, so a
        teacher saved with that layout is rebuilt as a copy of it (its values load next).
        """
        self._compiled_teacher = None
        if self._model is not None:
            has_text = any(k.startswith(f"{prefix}teacher_text.") for k in state_dict)
            if has_text and self.teacher_text is None:  # a fresh model: values load next
                self.teacher_text = frozen_copy(self._model.text_encoder)
            elif not has_text and self.teacher_text is not None:  # saved while the tower was frozen
                self.teacher_text = None
        saved = {k[len(prefix) + len("teacher."):] for k in state_dict if k.startswith(f"{prefix}teacher.")}
        if self.teacher is None or not saved or saved == set(self.teacher.state_dict()):
            return
        if self._model is not None and saved == set(self._model.detector.state_dict()):
            device = next(self._model.detector.parameters()).device
            self.teacher = frozen_copy(self._model.detector).to(device)
            return
        order = "distill before the trainer" if self.config.teacher == "base" else "the trainer before distill"
        raise ValueError(f"distill: the checkpoint's teacher has another layout than the detector it was saved "
                         f"with (the trainer added modules to the detector after the teacher was copied: lora's "
                         f"per_task_adapters, the specialist's heads), so a fresh model cannot rebuild it; with "
                         f"teacher {self.config.teacher!r} list {order} so the two layouts stay the same, and "
                         f"start the run over")

    def _run_teacher(self, images: torch.Tensor, text: torch.Tensor):
        # a named range, so profiles (benchmarks/profile_train_step.py) show the teacher's share of a step
        with torch.profiler.record_function("distill.teacher"):
            if not self.config.compile_teacher:
                return self.teacher(images, text)
            if self._compiled_teacher is None:  # the batch size of the first step is the compiled one
                self._compiled_teacher = compile_for_inference(fused_copy(self.teacher), len(images))
            return self._compiled_teacher(images, text)

    @torch.no_grad()
    def _teacher_embeddings(self, texts: list[list[str]], device: torch.device) -> torch.Tensor:
        """Per-image prompt lists -> (B, N, D) embeddings from the teacher's frozen text tower."""
        flat = [t for image_texts in texts for t in image_texts]
        unique = list(dict.fromkeys(flat))
        table = self.teacher_text(unique).to(device)
        index = {t: i for i, t in enumerate(unique)}
        rows = table[torch.tensor([index[t] for t in flat], device=device)]
        return rows.reshape(len(texts), -1, rows.shape[-1])

    def get_extra_state(self) -> dict:
        return {"vocabulary": self.vocabulary, "embeddings": self.vocabulary_embeddings}

    def set_extra_state(self, state: dict) -> None:
        self.vocabulary = list(state["vocabulary"])
        self.vocabulary_embeddings = state["embeddings"]

    def extra_losses(self, model: ContinualModel, batch: dict, output, text: torch.Tensor) -> dict:
        config = self.config
        if isinstance(config.vocabulary, str) and self.vocabulary_embeddings is None:
            raise RuntimeError(f"distill vocabulary {config.vocabulary!r} is resolved in before_task; "
                               f"call model.hook('before_task', task) before training")
        device = output.cls_logits[0].device
        images = images_to_device(batch["images"], device)
        num_current = len(images)
        if self.vocabulary_embeddings is not None:
            if self.teacher_text is None:
                distill_text = teacher_text = self.vocabulary_embeddings.to(device)[None]
            else:  # the student's training tower against the teacher's frozen copy
                distill_text = model.embed_texts([self.vocabulary]).to(device)
                teacher_text = self._teacher_embeddings([self.vocabulary], device)
            if self.reference is not None:
                extra = self.reference.draw(config.reference_per_step, images.shape[-1]).to(device)
                images = torch.cat([images, extra.to(images.dtype)])
            student = model.detector(images, distill_text)
        else:
            student = output
            teacher_text = text if self.teacher_text is None else self._teacher_embeddings(batch["texts"], device)
        with torch.no_grad(), teacher_autocast(config.teacher_precision, device):
            teacher = self._run_teacher(images, teacher_text.detach())
        teacher_logits = flatten_levels(teacher.cls_logits)
        confident = confident_locations(teacher_logits, config.confidence_threshold)
        losses = {}
        if config.cls_weight:
            mask = (confident | sample_negatives(confident, config.num_negatives)
                    if config.cls_confident_only else None)
            student_logits = flatten_levels(student.cls_logits)
            losses["loss_distill_cls"] = config.cls_weight * class_logit_loss(student_logits, teacher_logits, mask)
        if config.feat_weight:
            losses["loss_distill_feat"] = config.feat_weight * feature_loss(student.neck_feats, teacher.neck_feats)
        if config.dfl_weight:
            # boxes only on the batch's own images: reference images serve class scores and features
            current = [d[:num_current] for d in student.bbox_dists]
            losses["loss_distill_dfl"] = config.dfl_weight * dfl_loss(
                current, [d[:num_current] for d in teacher.bbox_dists], confident[:num_current],
                model.detector.config.reg_max, config.dfl_temperature)
        return losses
