"""Distillation losses between a student's and a teacher's `DetectorOutput`.

All losses are exactly zero when the student's outputs equal the teacher's,
so a distillation term only pulls once the student has moved.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-level (B, C, H, W) maps -> (B, A, C) with A = sum of H*W over levels, in float32."""
    return torch.cat([m.flatten(2) for m in maps], dim=2).transpose(1, 2).float()


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s))), from logits.

    Its gradient in s is sigmoid(s) - sigmoid(t), the sigmoid-BCE distillation
    gradient, but the value is exactly 0 where s == t (BCE with soft targets
    keeps the teacher's entropy as a floor). Written with log-sigmoid
    differences rather than BCE(s) - BCE(t): detector probabilities are mostly
    tiny, and the difference of two BCE values would cancel to float noise.
    """
    target = teacher_logits.sigmoid()
    return (target * (F.logsigmoid(teacher_logits) - F.logsigmoid(student_logits))
            + (1 - target) * (F.logsigmoid(-teacher_logits) - F.logsigmoid(-student_logits)))


def confident_locations(teacher_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, A, V) teacher logits -> (B, A) bool: highest class probability above `threshold`."""
    return teacher_logits.amax(-1).sigmoid() > threshold


def sample_negatives(confident: torch.Tensor, count: int) -> torch.Tensor:
    """(B, A) bool: up to `count` random non-confident locations per image (global torch RNG)."""
    if count == 0:
        return torch.zeros_like(confident)
    scores = torch.rand(confident.shape, device=confident.device)
    scores[confident] = -1.0
    count = min(count, confident.shape[1])
    chosen = torch.zeros_like(confident)
    chosen.scatter_(1, scores.topk(count, dim=1).indices, True)
    return chosen & ~confident


def class_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bernoulli KL summed over the vocabulary, averaged over locations.

    Summing over classes keeps the scale of a location's multi-label KL
    independent of the vocabulary size (a mean would dilute it by 1 / V).

    Args:
        student_logits, teacher_logits: (B, A, V).
        mask: (B, A) locations to use; None = all.
    """
    kl = bernoulli_kl(student_logits, teacher_logits).sum(-1)
    if mask is not None:
        kl = kl[mask]
    # an empty selection still returns a graph-connected zero, so backward() works
    return kl.mean() if kl.numel() else student_logits.sum() * 0.0


def feature_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """Per level: squared distance between L2-normalised (over channels) features,
    averaged over locations; then averaged over levels (2 - 2 cos per location)."""
    per_level = [(F.normalize(s.float(), dim=1) - F.normalize(t.float(), dim=1)).pow(2).sum(1).mean()
                 for s, t in zip(student_feats, teacher_feats)]
    return torch.stack(per_level).mean()


def dfl_loss(student_dists: list[torch.Tensor], teacher_dists: list[torch.Tensor], mask: torch.Tensor,
             reg_max: int, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) over the DFL bins of each box side, at `mask` locations.

    Args:
        student_dists, teacher_dists: per-level (B, 4 * reg_max, H, W) raw DFL logits.
        mask: (B, A) locations to use (teacher-confident).
        reg_max: bins per side.
        temperature: softmax temperature; the loss is multiplied by T^2 (Hinton).

    Returns:
        Mean over selected locations and sides; a graph-connected zero when none is selected.
    """
    student = flatten_levels(student_dists)[mask].reshape(-1, 4, reg_max)
    teacher = flatten_levels(teacher_dists)[mask].reshape(-1, 4, reg_max)
    if student.numel() == 0:
        return student_dists[0].sum() * 0.0
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * temperature ** 2
