"""`reparam`: re-parameterised fine-tuning (official tool, written from the spec, section 8).

At `before_task` the task's L2-normalised class embeddings E are folded into the
detector: every level's contrastive head becomes BatchNorm + a 1x1 class conv,
and with `fold_neck` every max-sigmoid block's text projection becomes per-head
class convs. Before any training the folded detector gives the unfolded logits
on the task vocabulary. Then the chosen parts train (the class convs included);
the text tower is no longer used. `export_state_dict()` gives the official
reparameterised layout.

A folded detector knows only its classes: prompts are mapped to class rows, and
any other prompt (another vocabulary, a teacher's general vocabulary) is refused
with a clear error. A later task's new classes are folded in as new rows, so a
sequence keeps every class seen so far.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.reparam._folded import ClassIndex, FoldedContrastiveHead, FoldedMaxSigmoidAttnBlock
from cl_detect.methods.reparam.config import ReparamConfig
from cl_detect.models.layers import MaxSigmoidAttnBlock
from cl_detect.models.official import cl_detect_to_official

logger = logging.getLogger(__name__)

PADDING_PROMPTS = ("", " ")  # the training ('') and evaluation (' ') padding prompts


class ReparamMethod(Method):
    is_trainer = True
    incompatible_with = ("distill", "mix", "wise")
    kept_outside_detector = "a rebuilt class head"

    def __init__(self, config: ReparamConfig):
        super().__init__(config)
        self.vocabulary: list[str] = []
        self.class_index: ClassIndex | None = None
        self._model: ContinualModel | None = None

    def incompatibility_reason(self) -> str:
        return ("a re-parameterised detector has no text input: it scores only the classes folded into it, so it "
                "cannot be distilled on a general vocabulary (distill), trained on other prompts (mix), or "
                "interpolated with the text-conditioned teacher (wise)")

    def setup(self, model: ContinualModel) -> None:
        object.__setattr__(self, "_model", model)  # plain reference: not a submodule
        self.class_index = ClassIndex(model.detector.config.text_dim)
        model.register_load_state_dict_pre_hook(self._fold_before_load)

    @property
    def folded(self) -> bool:
        return isinstance(self._model.detector.head.cls_contrasts[0], FoldedContrastiveHead)

    def mark_trainable(self, model: ContinualModel) -> None:
        prefixes = tuple(f"{part}." for part in self.config.parts)
        for name, param in model.detector.named_parameters():
            param.requires_grad_(name.startswith(prefixes))
        logger.info("reparam: %d trainable parameters", model.parameter_counts()[0])

    # ---- folding ------------------------------------------------------------------------------------
    def _attn_blocks(self, detector: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """(parent, attention block) for every max-sigmoid block of the neck."""
        return [(module, module.attn_block) for module in detector.neck.modules()
                if isinstance(getattr(module, "attn_block", None), (MaxSigmoidAttnBlock, FoldedMaxSigmoidAttnBlock))]

    def _fold_structure(self, detector: nn.Module, fold_neck: bool) -> None:
        """Swap in folded modules with no classes yet (rows come from `_add_classes`)."""
        head = detector.head
        for level, contrast in enumerate(head.cls_contrasts):
            head.cls_contrasts[level] = FoldedContrastiveHead(contrast, self.class_index)
        if fold_neck:
            for parent, block in self._attn_blocks(detector):
                parent.attn_block = FoldedMaxSigmoidAttnBlock(block, self.class_index)

    def _add_classes(self, detector: nn.Module, embeddings: torch.Tensor, padding: torch.Tensor) -> None:
        for module in detector.modules():
            if isinstance(module, (FoldedContrastiveHead, FoldedMaxSigmoidAttnBlock)):
                module.add_classes(embeddings)
        index = self.class_index
        index.class_embeddings = torch.cat([index.class_embeddings, embeddings.to(index.class_embeddings)])
        index.padding_embeddings = padding.to(index.padding_embeddings)

    @torch.no_grad()
    def before_task(self, model: ContinualModel, task: TaskContext) -> None:
        if len(set(task.vocabulary)) != len(task.vocabulary):
            raise ValueError(f"reparam: the task vocabulary repeats names: {list(task.vocabulary)}")
        new = [name for name in task.vocabulary if name not in self.vocabulary]
        if not new:
            return
        device = next(model.detector.parameters()).device
        self.class_index.to(device)
        # the encoder's output is L2-normalised: these are the E of the spec
        embeddings = model.text_encoder(new).to(device)
        padding = model.text_encoder(list(PADDING_PROMPTS)).to(device)
        if not self.folded:
            self._fold_structure(model.detector, self.config.fold_neck)
        self._add_classes(model.detector, embeddings, padding)
        self.vocabulary += new
        model.mark_trainable()
        logger.info("reparam: folded %d classes (%d in total)", len(new), len(self.vocabulary))

    # ---- text ---------------------------------------------------------------------------------------
    def applies_to(self, vocabulary: tuple[str, ...] | list[str]) -> bool:
        """Whether these class names can be scored: before anything is folded (the open-vocabulary
        model), or when every name was folded in (the runner records other sets as not applicable)."""
        return not self.vocabulary or set(vocabulary) <= set(self.vocabulary) | set(PADDING_PROMPTS)

    def text_embeddings(self, model: ContinualModel, texts: list[list[str]]) -> torch.Tensor | None:
        if not self.vocabulary:
            return None  # nothing folded yet: the plain detector and text tower
        row = {name: i for i, name in enumerate(self.vocabulary)}
        row.update({p: len(self.vocabulary) + i for i, p in enumerate(PADDING_PROMPTS)})
        flat = [t for image_texts in texts for t in image_texts]
        unknown = sorted({t for t in flat if t not in row})
        if unknown:
            raise ValueError(f"reparam: the detector was re-parameterised for {len(self.vocabulary)} classes "
                             f"{self.vocabulary[:10]}{'...' if len(self.vocabulary) > 10 else ''} and cannot score "
                             f"other prompts such as {unknown[:5]}; " + (
                                 "a training batch names them, so data mixed into the task holds other classes "
                                 "(replay's pretraining_data, a dataset of another vocabulary): drop that data "
                                 "or use a method that keeps its text input" if model.training else
                                 "evaluate other vocabularies with a model that keeps its text input (any method "
                                 "but reparam)"))
        table = torch.cat([self.class_index.class_embeddings, self.class_index.padding_embeddings])
        rows = table[torch.tensor([row[t] for t in flat], device=table.device)]
        return rows.reshape(len(texts), -1, rows.shape[-1])

    # ---- export and checkpoints ---------------------------------------------------------------------
    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The detector in the official reparameterised layout (no text tower, no fold sources)."""
        if not self.vocabulary:
            raise ValueError("reparam: nothing is folded yet; call before_task with the task vocabulary first")
        return {cl_detect_to_official(k): v.detach().cpu() for k, v in self._model.detector.state_dict().items()
                if ".fold_" not in k}

    def get_extra_state(self) -> dict:
        return {"vocabulary": list(self.vocabulary)}

    def set_extra_state(self, state: dict) -> None:
        self.vocabulary = list(state["vocabulary"])

    def _fold_before_load(self, model, state_dict, prefix, *args) -> None:
        """Give the model the folded structure and class count the state dict has, so it loads."""
        head_key = f"{prefix}detector.head.cls_contrasts.0.conv.weight"
        if head_key not in state_dict:
            return
        wanted = state_dict[head_key].shape[0]
        have = len(self.class_index.class_embeddings)
        if self.folded and have == wanted:
            return
        if self.folded:
            raise ValueError(f"reparam: the checkpoint has {wanted} folded classes, this model {have}; "
                             f"load it into a fresh model")
        fold_neck = any(".attn_block.guide_convs." in k for k in state_dict if k.startswith(prefix))
        self._fold_structure(model.detector, fold_neck)
        dim = self.class_index.class_embeddings.shape[1]
        padding = state_dict.get(f"{prefix}methods.{self._own_index(model)}.class_index.padding_embeddings",
                                 torch.zeros(len(PADDING_PROMPTS), dim))
        # placeholder rows of the right shapes; the load writes the real values
        self._add_classes(model.detector, torch.zeros(wanted, dim), torch.zeros_like(padding))
        model.mark_trainable()

    def _own_index(self, model: ContinualModel) -> int:
        return next(i for i, method in enumerate(model.methods) if method is self)
