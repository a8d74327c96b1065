"""Configuration of the `distill` method."""
from __future__ import annotations

from dataclasses import dataclass

TEACHERS = ("base", "previous_task")
TEACHER_PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class DistillConfig:
    """Distillation from a frozen copy of the detector.

    Args:
        teacher: "base" (the detector before the first task, default) or
            "previous_task" (the teacher is refreshed to the current detector at
            the start of every task).
        vocabulary: the teacher's vocabulary for class-logit distillation: a list
            of names, a path to a text file with one name per line (a string
            containing "/" or ending in ".txt"), or the name of a retention set
            looked up in `TaskContext.extras["general_vocabulary"]` (a dict
            name -> names, or directly a list of names). None distils on each
            batch's own prompts (no extra student pass, but only the task's classes).
        cls_weight: weight of `loss_distill_cls` (Bernoulli KL between teacher and
            student class probabilities). 0 turns it off.
        feat_weight: weight of `loss_distill_feat` (MSE between channel-normalised
            neck features, averaged over levels). 0 turns it off.
        dfl_weight: weight of `loss_distill_dfl` (KL between the teacher's and the
            student's DFL bin distributions at teacher-confident locations). 0 turns it off.
        confidence_threshold: a location is teacher-confident when the teacher's
            highest class probability there exceeds this.
        cls_confident_only: distil class logits only at confident locations plus
            `num_negatives` random other locations per image (False: everywhere).
        num_negatives: random non-confident locations per image (cls_confident_only).
        dfl_temperature: softmax temperature of the DFL bins (loss scaled by T^2).
        reference_images: ZSCL-style reference set: a folder of images or any
            dataset path `read_dataset` reads. Images drawn from it each step go
            through both models for the class-logit and feature losses; needs `vocabulary`.
        reference_per_step: reference images drawn per step.
        compile_teacher: run the teacher BatchNorm-folded and through torch.compile
            (`cl_detect.models.fuse.compile_for_inference`). The first step compiles (tens
            of seconds on a CPU for S, more for larger models; a refreshed teacher of the
            same shapes reuses it), so it pays off on long runs only. Teacher outputs then
            differ from the plain teacher's by float rounding (about 1e-6).
        teacher_precision: "auto" (default: bf16 autocast on CUDA; on a CPU the
            training step's precision, float32 unless TrainConfig.amp_cpu), "bf16"
            (bf16 autocast on any device: 1.5-2x faster on a CPU with bf16 units,
            slow on one without) or "fp32" (autocast off). Only the teacher's forward
            pass is affected; the losses are computed in float32.
    """

    teacher: str = "base"
    vocabulary: list[str] | str | None = None
    cls_weight: float = 1.0
    feat_weight: float = 1.0
    dfl_weight: float = 1.0
    confidence_threshold: float = 0.3
    cls_confident_only: bool = False
    num_negatives: int = 64
    dfl_temperature: float = 1.0
    reference_images: str | None = None
    reference_per_step: int = 4
    compile_teacher: bool = False
    teacher_precision: str = "auto"

    def __post_init__(self):
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.teacher_precision not in TEACHER_PRECISIONS:
            raise ValueError(f"teacher_precision must be one of {TEACHER_PRECISIONS}, got {self.teacher_precision!r}")
        if isinstance(self.vocabulary, (list, tuple)):
            if not self.vocabulary or not all(isinstance(n, str) and n.strip() for n in self.vocabulary):
                raise ValueError("vocabulary must be a non-empty list of non-empty names")
            self.vocabulary = list(self.vocabulary)
        elif self.vocabulary is not None and not (isinstance(self.vocabulary, str) and self.vocabulary.strip()):
            raise ValueError(f"vocabulary must be a list of names, a file path or a retention-set name, "
                             f"got {self.vocabulary!r}")
        weights = {"cls_weight": self.cls_weight, "feat_weight": self.feat_weight, "dfl_weight": self.dfl_weight}
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        if not any(weights.values()):
            raise ValueError("all distillation weights are 0: distill would do nothing; drop it from the run")
        if not 0 <= self.confidence_threshold < 1:
            raise ValueError(f"confidence_threshold must be in [0, 1), got {self.confidence_threshold}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if self.dfl_temperature <= 0:
            raise ValueError(f"dfl_temperature must be > 0, got {self.dfl_temperature}")
        if self.reference_images is not None:
            if self.vocabulary is None:
                raise ValueError("reference_images needs a vocabulary: reference images have no prompts of their "
                                 "own; set vocabulary (e.g. the COCO names)")
            if self.reference_per_step < 1:
                raise ValueError(f"reference_per_step must be >= 1, got {self.reference_per_step}")

    @property
    def vocabulary_is_file(self) -> bool:
        """Whether `vocabulary` names a text file (else a list, a retention-set name or None)."""
        return isinstance(self.vocabulary, str) and ("/" in self.vocabulary or self.vocabulary.endswith(".txt"))
