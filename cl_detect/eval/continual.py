"""Continual-learning metrics, exactly as written in DESIGN.md and docs/metrics.md.

Matrices are indexed like the formulas, with row 0 = before any training:

- accuracy `acc`, shape (T+1, T): `acc[i, j-1]` = a[i][j], AP on task j's test
  set after training task i (i = 0..T, j = 1..T). Row 0 is the base model's
  zero-shot AP on each task; only the retention ratio reads a row-0 value
  (from the retention matrix), the accuracy metrics use rows 1..T as the
  formulas say.
- retention `ret`, shape (T+1, S): `ret[i, s]` = z[i][s], AP on retention set
  s (e.g. COCO val with 80 names) after task i; row 0 = before training.

Metrics that need two tasks (forgetting, BWT, zero-shot transfer) return NaN
for T = 1, meaning "undefined for a one-task sequence" (a table prints it as a
dash); a retention ratio whose base AP is 0 is NaN for the same reason. Wrong
shapes raise ValueError.

A NaN cell of `acc` means "not applicable" (a closed-set model scored on a
task it has not learned yet). The cells the formulas cannot do without, the
last row a[T][j] (in-domain Avg, F, BWT) and the diagonal a[j][j] (BWT), must
be defined: a NaN there raises ValueError naming the cell, rather than a NaN
metric or a mean over fewer tasks that would flatter the run.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _accuracy(acc: np.ndarray | Sequence) -> np.ndarray:
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 2 or acc.shape[1] < 1 or acc.shape[0] != acc.shape[1] + 1:
        raise ValueError(
            f"accuracy matrix must have shape (T+1, T) with row 0 = before training, got {acc.shape}")
    return acc


def check_required_cells(acc: np.ndarray | Sequence) -> None:
    """Raise ValueError naming the first NaN in the last row or on the diagonal (rows 1..T).

    Args:
        acc: (T+1, T) accuracy matrix, row 0 = before training.
    """
    acc = _accuracy(acc)
    num_tasks = acc.shape[1]
    cells = [(num_tasks, j) for j in range(1, num_tasks + 1)] + [(j, j) for j in range(1, num_tasks)]
    for i, j in cells:
        if np.isnan(acc[i, j - 1]):
            raise ValueError(
                f"accuracy a[{i}][{j}] (AP on task {j} after training task {i}) is NaN (not evaluated or not "
                f"applicable); in-domain Avg, forgetting and BWT need every task's AP right after it is learned "
                f"and after the last task: evaluate that cell (other cells may be NaN)")


def in_domain_avg(acc: np.ndarray | Sequence) -> float:
    """Mean over tasks j of a[T][j]: AP on every task's test set after the last task.

    Args:
        acc: (T+1, T) accuracy matrix, row 0 = before training.

    Returns:
        The in-domain average.
    """
    acc = _accuracy(acc)
    check_required_cells(acc)
    return float(np.mean(acc[-1]))


def forgetting(acc: np.ndarray | Sequence) -> float:
    """F = mean_{j<T} (max_{l<T} a[l][j] - a[T][j]).

    The max runs over rows l = 1..T-1, as written, so it includes rows
    before task j was trained (its zero-shot AP) but not row 0.

    Args:
        acc: (T+1, T) accuracy matrix, row 0 = before training.

    Returns:
        Forgetting (positive = AP lost); NaN when T = 1.
    """
    acc = _accuracy(acc)
    check_required_cells(acc)
    num_tasks = acc.shape[1]
    if num_tasks < 2:
        return float("nan")
    best_before_last = acc[1:num_tasks, : num_tasks - 1].max(axis=0)
    return float(np.mean(best_before_last - acc[num_tasks, : num_tasks - 1]))


def backward_transfer(acc: np.ndarray | Sequence) -> float:
    """BWT = mean_{j<T} (a[T][j] - a[j][j]).

    Args:
        acc: (T+1, T) accuracy matrix, row 0 = before training.

    Returns:
        Backward transfer (negative = forgetting); NaN when T = 1.
    """
    acc = _accuracy(acc)
    check_required_cells(acc)
    num_tasks = acc.shape[1]
    if num_tasks < 2:
        return float("nan")
    tasks = np.arange(1, num_tasks)
    return float(np.mean(acc[num_tasks, tasks - 1] - acc[tasks, tasks - 1]))


def zero_shot_transfer(acc: np.ndarray | Sequence) -> float:
    """Mean over j > 1 of mean over i < j of a[i][j]: AP on a task before it is learned.

    Follows the formula literally with i = 1..j-1, so row 0 (the base model
    before any training) is not included; task 1 has no such rows and is skipped.

    Args:
        acc: (T+1, T) accuracy matrix, row 0 = before training.

    Returns:
        Zero-shot transfer; NaN when T = 1.
    """
    acc = _accuracy(acc)
    num_tasks = acc.shape[1]
    if num_tasks < 2:
        return float("nan")
    per_task = [np.mean(acc[1:j, j - 1]) for j in range(2, num_tasks + 1)]
    return float(np.mean(per_task))


def retention_ratio(ret: np.ndarray | Sequence) -> np.ndarray:
    """R_s = z[T][s] / z[0][s] for every retention set s.

    Args:
        ret: (T+1, S) retention matrix, row 0 = before training.

    Returns:
        (S,) ratios; NaN where z[0][s] is 0 (nothing to retain).
    """
    ret = np.asarray(ret, dtype=np.float64)
    if ret.ndim != 2 or ret.shape[0] < 2:
        raise ValueError(f"retention matrix must have shape (T+1, S) with T >= 1, got {ret.shape}")
    base = ret[0]
    ratio = np.full(base.shape, np.nan)
    np.divide(ret[-1], base, out=ratio, where=base != 0)
    return ratio


def continual_summary(acc: np.ndarray | Sequence, ret: np.ndarray | Sequence | None = None,
                      retention_names: Sequence[str] = ()) -> dict[str, float]:
    """All continual metrics of one run.

    Args:
        acc: (T+1, T) accuracy matrix, row 0 = before training.
        ret: (T+1, S) retention matrix (same T), or None without retention sets.
        retention_names: S names of the retention sets; "coco" and "lvis"
            (any case) also give ZCOCO = z[T]["coco"] and ZLVIS = z[T]["lvis"].

    Returns:
        in_domain_avg, forgetting, bwt, zero_shot_transfer, retention_<name>
        (the ratio R_s) and final_<name> (z[T][s]) per set, plus ZCOCO / ZLVIS.
    """
    acc = _accuracy(acc)
    summary = {
        "in_domain_avg": in_domain_avg(acc),
        "forgetting": forgetting(acc),
        "bwt": backward_transfer(acc),
        "zero_shot_transfer": zero_shot_transfer(acc),
    }
    if ret is None:
        return summary
    ret = np.asarray(ret, dtype=np.float64)
    if ret.ndim != 2 or ret.shape[0] != acc.shape[0] or ret.shape[1] != len(retention_names):
        raise ValueError(
            f"retention matrix must have shape (T+1, S) = ({acc.shape[0]}, {len(retention_names)}) "
            f"for {len(retention_names)} retention names, got {ret.shape}")
    for name, ratio, final in zip(retention_names, retention_ratio(ret), ret[-1]):
        summary[f"retention_{name}"] = float(ratio)
        summary[f"final_{name}"] = float(final)
        if name.lower() in ("coco", "lvis"):
            summary[f"Z{name.upper()}"] = float(final)
    return summary
