"""`prompt`: prompt tuning as in the official recipe.

The task's class embeddings become an (N, D) parameter initialised from the text
encoder at `before_task`; the detector and text tower stay frozen, so only N x D
numbers (plus the optional MLP adapter) train. As in the official prompt-tuned
detector the learned embeddings reach the neck as they are (not re-normalised;
the contrastive head normalises them); with the adapter they are
`normalize(adapter(E) + E)`.

Batches carry per-image prompt lists (positives, negatives, '' padding): each
prompt of the task vocabulary maps to its learned row; any other string ('',
other tasks' names, evaluation vocabularies) gets the frozen encoder's embedding,
so detection of everything outside the task is exactly the pre-trained model's.
At the next task the learned rows are kept, frozen, for their class names.

Everything but the task's rows is frozen, so a training image none of whose prompts
is a task class (replayed or mixed-in data of other vocabularies) gives no gradient;
the first such batch of a task logs a warning.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.prompt.config import PromptConfig

logger = logging.getLogger(__name__)


class PromptMethod(Method):
    is_trainer = True
    # both act on detector weights only, which prompt tuning freezes
    incompatible_with = ("distill", "wise")
    kept_outside_detector = "class embeddings"

    def incompatibility_reason(self) -> str:
        return ("prompt tuning freezes the detector and trains only class embeddings, so distill (student and "
                "teacher are the same detector given the same text: every loss is exactly 0, at the cost of a "
                "teacher pass per step) and wise (it interpolates detector weights, which prompt never changes) "
                "would do nothing; prompt tuning already keeps the pre-trained detector untouched")

    def __init__(self, config: PromptConfig):
        super().__init__(config)
        self.vocabulary: list[str] = []  # rows of `embeddings` (the current task)
        self.frozen_vocabulary: list[str] = []  # rows of `frozen_embeddings` (earlier tasks)
        self.embeddings = nn.Parameter(torch.zeros(0, 0))
        self.register_buffer("frozen_embeddings", torch.zeros(0, 0))
        self.adapter: nn.Module | None = None
        self._model: ContinualModel | None = None
        self._warned_no_gradient = False  # once per task
        self.register_load_state_dict_pre_hook(self._resize_before_load)

    def setup(self, model: ContinualModel) -> None:
        object.__setattr__(self, "_model", model)  # plain reference: not a submodule
        dim = model.detector.config.text_dim
        self.embeddings = nn.Parameter(torch.zeros(0, dim))
        self.frozen_embeddings = torch.zeros(0, dim)
        if self.config.use_mlp_adapter:
            self.adapter = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(inplace=True), nn.Linear(2 * dim, dim))
            # zero last layer: the adapted embedding starts as normalize(E) = E (encoder output),
            # so training starts from the pre-trained detector's behaviour
            nn.init.zeros_(self.adapter[2].weight)
            nn.init.zeros_(self.adapter[2].bias)

    def mark_trainable(self, model: ContinualModel) -> None:
        self.embeddings.requires_grad_(len(self.vocabulary) > 0)
        if self.adapter is not None:
            self.adapter.requires_grad_(True)
        count = sum(p.numel() for p in self.parameters() if p.requires_grad)
        logger.info("prompt: %d class embeddings, %d trainable parameters", len(self.vocabulary), count)

    # ---- task boundaries ----------------------------------------------------------------------------
    @torch.no_grad()
    def before_task(self, model: ContinualModel, task: TaskContext) -> None:
        vocabulary = list(task.vocabulary)
        if not vocabulary:  # grounding data: each image brings its own phrases
            raise ValueError(f"prompt: task {task.name!r} has no class list (grounding data: a caption and its "
                             f"phrases per image), so there are no class embeddings to tune; give this task "
                             f"detection data or use another method")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError(f"prompt: the task vocabulary repeats names: {vocabulary}")
        learned = self._learned_rows()
        self._freeze_rows(learned, keep=set(vocabulary))
        device = self.embeddings.device
        encoded = model.text_encoder(vocabulary).to(device)
        rows = [learned[name] if self.config.reuse_learned and name in learned else encoded[i]
                for i, name in enumerate(vocabulary)]
        self.vocabulary = vocabulary
        self.embeddings = nn.Parameter(torch.stack(rows).to(device))
        self._warned_no_gradient = False
        model.mark_trainable()

    def _learned_rows(self) -> dict[str, torch.Tensor]:
        """Every learned embedding by name (earlier tasks' frozen rows, then the current raw rows)."""
        rows = dict(zip(self.frozen_vocabulary, self.frozen_embeddings))
        rows.update(zip(self.vocabulary, self.embeddings.detach()))
        return rows

    def _freeze_rows(self, learned: dict[str, torch.Tensor], keep: set[str]) -> None:
        """Move the current task's rows (as the detector sees them) into the frozen table."""
        frozen = dict(zip(self.frozen_vocabulary, self.frozen_embeddings))
        if self.vocabulary:
            effective = self._effective(self.embeddings.detach())
            frozen.update(zip(self.vocabulary, effective))
        frozen = {name: row for name, row in frozen.items() if name not in keep}
        self.frozen_vocabulary = list(frozen)
        dim = self.embeddings.shape[1]
        self.frozen_embeddings = (torch.stack(list(frozen.values())) if frozen
                                  else torch.zeros(0, dim, device=self.embeddings.device))

    # ---- text ---------------------------------------------------------------------------------------
    def _effective(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.adapter is None:
            return embeddings
        return F.normalize(self.adapter(embeddings) + embeddings, dim=-1)

    def learned_embeddings(self) -> torch.Tensor:
        """The current task's (N, D) embeddings as the detector sees them (adapter applied)."""
        return self._effective(self.embeddings)

    def text_embeddings(self, model: ContinualModel, texts: list[list[str]]) -> torch.Tensor:
        if self.vocabulary and self.training and torch.is_grad_enabled() and not self._warned_no_gradient:
            self._warn_images_without_task_prompts(texts)
        flat = [t for image_texts in texts for t in image_texts]
        own = {name: i for i, name in enumerate(self.vocabulary)}
        own.update({name: len(own) + i for i, name in enumerate(self.frozen_vocabulary) if name not in own})
        others = [t for t in dict.fromkeys(flat) if t not in own]
        device = self.embeddings.device
        parts = [self.learned_embeddings(), self.frozen_embeddings]
        if others:
            with torch.no_grad():  # the tower is frozen; it caches each vocabulary
                parts.append(model.text_encoder(others).to(device))
        table = torch.cat(parts)
        index = {**own, **{t: len(own) + i for i, t in enumerate(others)}}
        rows = table[torch.tensor([index[t] for t in flat], device=device)]
        return rows.reshape(len(texts), -1, rows.shape[-1])

    def _warn_images_without_task_prompts(self, texts: list[list[str]]) -> None:
        vocabulary = set(self.vocabulary)
        unreached = [image_texts for image_texts in texts if not vocabulary.intersection(image_texts)]
        if unreached:
            self._warned_no_gradient = True
            logger.warning("prompt: %d of %d images of a training batch have none of the task's classes among "
                           "their prompts (e.g. %s; data mixed in by replay or mix from other vocabularies): every "
                           "other class row is frozen, so such images give no gradient and only take draws; they "
                           "help only where they name the task's classes (see docs/methods.md, prompt)",
                           len(unreached), len(texts), [t for t in unreached[0] if t][:5])

    # ---- export -------------------------------------------------------------------------------------
    def export_embeddings(self, path: str | Path) -> Path:
        """Write the current task's embeddings as an (N, D) float32 .npy (official `embedding_path`).

        Rows follow `self.vocabulary`. They are what the detector sees (with the
        adapter: already adapted and normalised), so official tooling without the
        adapter reproduces this model.
        """
        if not self.vocabulary:
            raise ValueError("prompt: no class embeddings yet; call before_task with the task vocabulary first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.learned_embeddings().detach().cpu().float().numpy())
        return path

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Official prompt-tuned layout: the detector's tensors plus `embeddings` (N, D)."""
        from cl_detect.models.official import official_state_dict
        if self._model is None or not self.vocabulary:
            raise ValueError("prompt: attach the method to a model and call before_task first")
        state_dict = official_state_dict(self._model.detector)
        state_dict["embeddings"] = self.learned_embeddings().detach().cpu()
        return state_dict

    # ---- checkpoints --------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"vocabulary": list(self.vocabulary), "frozen_vocabulary": list(self.frozen_vocabulary)}

    def set_extra_state(self, state: dict) -> None:
        self.vocabulary = list(state["vocabulary"])
        self.frozen_vocabulary = list(state["frozen_vocabulary"])
        if self._model is not None:
            self._model.mark_trainable()

    def _resize_before_load(self, module, state_dict, prefix, *args) -> None:
        """A fresh method has no rows yet: take the shapes the checkpoint has."""
        if f"{prefix}embeddings" in state_dict:
            shape = state_dict[f"{prefix}embeddings"].shape
            if shape != self.embeddings.shape:
                self.embeddings = nn.Parameter(self.embeddings.new_zeros(shape))
        if f"{prefix}frozen_embeddings" in state_dict:
            self.frozen_embeddings = self.frozen_embeddings.new_zeros(state_dict[f"{prefix}frozen_embeddings"].shape)
