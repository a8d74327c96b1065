"""Evaluate a `ContinualModel` on every task test set and every retention set.

Prompts are embedded through the model (`ContinualModel.embed_texts`), so a
method that owns class embeddings (prompt tuning) is scored with them, exactly
as it trains. A set whose vocabulary the model cannot score (a closed-set
`specialist` on another dataset's names, `cl_detect.bench.baselines`) is
recorded as not applicable: null in the matrices, no rows.
"""
from __future__ import annotations

import torch

from cl_detect.bench.baselines import evaluation_applies
from cl_detect.bench.config import EvalSettings
from cl_detect.bench.protocol import ProtocolData
from cl_detect.eval.detector_eval import evaluate_detector
from cl_detect.models.fuse import fused_copy

# the statistics kept as typed rows (when the evaluator reports them)
ROW_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


class ModelTexts:
    """A text-encoder-like callable that embeds through the model and its methods."""

    def __init__(self, model):
        self.model = model

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.model.embed_texts([list(texts)])[0]


def evaluate_all(model, data: ProtocolData, settings: EvalSettings) -> list[dict]:
    """Score the model on every task test set, then every retention set.

    Args:
        model: the ContinualModel (on its device).
        data: the protocol's datasets.
        settings: inference settings.

    Returns:
        One entry per set: {"eval_set", "kind" ("task"/"retention"), "protocol", "applies", "stats"
        (ROW_METRICS present; empty when the model cannot score the set's vocabulary), "per_category_ap"}.
    """
    model.clear_text_cache()  # a text tower trained since the last evaluation makes cached embeddings stale
    texts = ModelTexts(model)
    detector = fused_copy(model.detector)  # one inference copy for every set of this stage
    entries = []
    jobs = [(task.name, "task", task.test, "coco", None) for task in data.tasks]
    jobs += [(r.name, "retention", r.dataset, r.protocol, r.prompts) for r in data.retention]
    for name, kind, dataset, protocol, prompts in jobs:
        if not evaluation_applies(model, prompts or dataset.vocabulary.names):
            # a closed-set model has no classifier for this vocabulary: "not applicable", not AP 0
            entries.append({"eval_set": name, "kind": kind, "protocol": protocol, "applies": False, "stats": {},
                            "per_category_ap": {}})
            continue
        stats = evaluate_detector(detector, texts, dataset, settings.image_size, settings.batch_size,
                                  protocol=protocol, prompts=prompts, backend=settings.backend,
                                  num_workers=settings.num_workers, fuse=False, compile=settings.compile)
        entries.append({"eval_set": name, "kind": kind, "protocol": stats.get("protocol", protocol),
                        "applies": True, "stats": {k: float(stats[k]) for k in ROW_METRICS if k in stats},
                        "per_category_ap": {str(k): float(v) for k, v in stats["per_category_ap"].items()}})
    return entries


def sweep_evaluator(data: ProtocolData, settings: EvalSettings):
    """`evaluate_fn` for methods that sweep a coefficient (WiSE): model -> {set name: AP}."""
    def evaluate_fn(model) -> dict[str, float]:
        return {entry["eval_set"]: entry["stats"]["AP"] for entry in evaluate_all(model, data, settings)
                if entry["applies"]}
    return evaluate_fn


def sweep_rows(model, task_name: str, label: str, seed: int) -> list[dict]:
    """Typed rows (with `wise_alpha`) from any method that kept sweep results for `task_name`.

    The `wise` method stores `sweep_results[task] = [{"alpha", "metrics": evaluate_fn(model)}]`;
    methods without `sweep_results` contribute nothing.
    """
    rows = []
    for method in model.methods:
        for point in (getattr(method, "sweep_results", None) or {}).get(task_name, []):
            for eval_set, value in point["metrics"].items():
                rows.append({"method": label, "seed": seed, "train_task": task_name, "eval_set": eval_set,
                             "metric": "AP", "value": float(value), "wise_alpha": float(point["alpha"])})
    return rows


def matrices(evaluations: list[dict], task_names: list[str], retention_names: list[str]
             ) -> tuple[list[list[float | None]], list[list[float | None]]]:
    """Accuracy (T+1, T) and retention (T+1, S) matrices of AP; None where not evaluated (yet) or not applicable."""
    num_rows = len(task_names) + 1
    accuracy = [[None] * len(task_names) for _ in range(num_rows)]
    retention = [[None] * len(retention_names) for _ in range(num_rows)]
    for entry in evaluations:
        if entry["kind"] == "task":
            accuracy[entry["stage"]][task_names.index(entry["eval_set"])] = entry["stats"].get("AP")
        else:
            retention[entry["stage"]][retention_names.index(entry["eval_set"])] = entry["stats"].get("AP")
    return accuracy, retention


def typed_rows(evaluations: list[dict], label: str, seed: int) -> list[dict]:
    """One row per (stage, set, metric): {method, seed, train_task, eval_set, metric, value}.

    `train_task` is the task just trained (None for the base model, stage 0).
    """
    return [{"method": label, "seed": seed, "train_task": entry["train_task"], "eval_set": entry["eval_set"],
             "metric": metric, "value": value}
            for entry in evaluations for metric, value in entry["stats"].items()]
