"""`specialist`: the closed-set reference ("a fine-tuned YOLOv8 vs zero-shot YOLO-World").

The same backbone and text-guided neck as the open-vocabulary detector, but the
contrastive region-text score of every head level is replaced by a plain 1x1
convolution from the region embedding to the task's classes. Each task gets a
freshly initialised classifier for its own vocabulary; the whole detector is
fine-tuned (full fine-tuning, text tower frozen).

Prompts are still passed as text embeddings, because the neck attends to them
and the loss pairs labels with prompts, but the head only uses them to tell
*which* class a prompt is: its logit is the classifier channel of that class,
whatever the embedding's values. A prompt no learned vocabulary contains (the
padding prompt, another dataset's names) gets `absent_logit`, so the
specialist cannot be evaluated on a vocabulary it was not trained on: the
runner records such evaluations as NaN ("not applicable"), see
`SpecialistMethod.applies_to` and `cl_detect.bench.baselines.evaluation_applies`.
Earlier tasks keep their classifiers, so after the last task each earlier
task is still evaluated, with its own classifier on the shared, updated
features: the closed-set forgetting.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.specialist.config import SpecialistConfig


class ClosedSetScore(nn.Module):
    """Drop-in for a head level's contrastive score: (region embedding, texts) -> (B, N, H, W) logits.

    Args:
        embed_dims: channels of the region embedding (the detector's text_dim).
        stride: the level's stride (for the classifier bias prior).
        match_threshold, absent_logit: see `SpecialistConfig`.
    """

    def __init__(self, embed_dims: int, stride: int, match_threshold: float, absent_logit: float):
        super().__init__()
        self.embed_dims, self.stride = embed_dims, stride
        self.match_threshold, self.absent_logit = match_threshold, absent_logit
        self.classifiers = nn.ModuleList()
        self.register_buffer("name_embeddings", torch.zeros(0, embed_dims))

    def add_task(self, name_embeddings: torch.Tensor) -> None:
        """A new classifier for a vocabulary, given its names' (K, D) text embeddings."""
        num_classes = len(name_embeddings)
        classifier = nn.Conv2d(self.embed_dims, num_classes, 1).to(self.name_embeddings.device)
        nn.init.normal_(classifier.weight, std=0.01)
        # the head's own prior (about 5 objects per 640-px image), so early losses match the detector's
        nn.init.constant_(classifier.bias, math.log(5 / num_classes / (640 / self.stride) ** 2))
        self.classifiers.append(classifier)
        embeddings = F.normalize(name_embeddings.detach().float(), dim=-1).to(self.name_embeddings.device)
        self.name_embeddings = torch.cat([self.name_embeddings, embeddings])

    def class_index(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) classifier channel of each prompt and whether it is known at all."""
        # matched in float32 outside autocast: bf16 similarities of identical texts can fall below 0.999
        with torch.autocast(device_type=text.device.type, enabled=False):
            similarity = F.normalize(text.float(), dim=-1) @ self.name_embeddings.T
        # a name learned in several tasks uses the newest classifier: argmax over the reversed columns
        last = similarity.flip(-1).argmax(-1)
        index = similarity.shape[-1] - 1 - last
        known = similarity.max(-1).values >= self.match_threshold
        return index, known

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([classifier(x) for classifier in self.classifiers], 1)
        index, known = self.class_index(text)
        height, width = logits.shape[-2:]
        gathered = logits.gather(1, index[..., None, None].expand(-1, -1, height, width))
        return gathered.masked_fill(~known[..., None, None], self.absent_logit)


def _class_counts(score: nn.Module) -> list[int] | None:
    """Classes of each task classifier of a closed-set score; None for any other head level."""
    if not isinstance(score, ClosedSetScore):
        return None
    return [classifier.out_channels for classifier in score.classifiers]


class SpecialistMethod(Method):
    is_trainer = True
    # prompt tuning learns the class embeddings this head only uses as names; WiSE would
    # interpolate towards a base model that has no closed-set classifier
    incompatible_with = ("prompt", "wise")
    kept_outside_detector = "closed-set classifiers"
    adds_class_heads_each_task = "a new closed-set classifier for each task's classes"

    def __init__(self, config: SpecialistConfig):
        super().__init__(config)
        self.vocabularies: list[tuple[str, ...]] = []

    def incompatibility_reason(self) -> str:
        return "the specialist replaces the region-text score by per-class classifiers, so there is no " \
               "text embedding to tune and no open-vocabulary head to interpolate with"

    def setup(self, model: ContinualModel) -> None:
        # a saved specialist has closed-set heads the freshly built detector lacks: rebuild them
        # from the checkpoint's shapes before its tensors are copied in (resume across tasks);
        # heads that already have those shapes are kept, so the optimizer's parameters stay the model's
        model.register_load_state_dict_pre_hook(self._rebuild_heads)

    def _rebuild_heads(self, model: ContinualModel, state_dict: dict, prefix: str, *args) -> None:
        head = model.detector.head
        for level, stride in enumerate(model.detector.strides):
            key = f"{prefix}detector.head.cls_contrasts.{level}.classifiers."
            sizes = {int(k[len(key):].split(".")[0]): v.shape[0] for k, v in state_dict.items()
                     if k.startswith(key) and k.endswith(".weight")}
            if not sizes or _class_counts(head.cls_contrasts[level]) == [sizes[t] for t in range(len(sizes))]:
                # already the checkpoint's layout (a resumed task): keep the modules the optimizer holds
                continue
            device = next(model.detector.parameters()).device
            score = ClosedSetScore(model.detector.config.text_dim, stride, self.config.match_threshold,
                                   self.config.absent_logit).to(device)
            for task in range(len(sizes)):
                score.add_task(torch.zeros(sizes[task], model.detector.config.text_dim))  # values load next
            head.cls_contrasts[level] = score

    def mark_trainable(self, model: ContinualModel) -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("detector."))

    def before_task(self, model: ContinualModel, task: TaskContext) -> None:
        """Install the closed-set scores (first task) and add a fresh classifier for this vocabulary."""
        if not task.vocabulary:  # grounding data: each image brings its own phrases
            raise ValueError(f"specialist: task {task.name!r} has no class list (grounding data: a caption and "
                             f"its phrases per image), so there is no closed set to classify; give this task "
                             f"detection data or use an open-vocabulary method")
        head = model.detector.head
        with torch.no_grad():
            name_embeddings = model.text_encoder(list(task.vocabulary))
        for level, stride in enumerate(model.detector.strides):
            if not isinstance(head.cls_contrasts[level], ClosedSetScore):
                device = next(head.cls_contrasts[level].parameters()).device
                head.cls_contrasts[level] = ClosedSetScore(model.detector.config.text_dim, stride,
                                                           self.config.match_threshold,
                                                           self.config.absent_logit).to(device)
            head.cls_contrasts[level].add_task(name_embeddings)
        self.vocabularies.append(tuple(task.vocabulary))
        model.mark_trainable()

    def applies_to(self, vocabulary: tuple[str, ...] | list[str]) -> bool:
        """Whether the model can be evaluated with these class names now.

        True before the first task (the open-vocabulary base model) and for
        vocabularies whose names were all learned in some task.
        """
        learned = {name for names in self.vocabularies for name in names}
        return not self.vocabularies or set(vocabulary) <= learned

    def get_extra_state(self) -> dict:
        return {"vocabularies": [list(v) for v in self.vocabularies]}

    def set_extra_state(self, state: dict) -> None:
        self.vocabularies = [tuple(v) for v in state["vocabularies"]]
