"""Hand-written result dicts in the runner's JSON schema, for table and plot tests."""
from __future__ import annotations

import json
from pathlib import Path

TASKS = ["shapes", "domain"]
RETENTION_SETS = ["coco"]


def result_dict(method: str, seed: int, final: tuple[float, float], retained: float,
                status: str = "finished", error: str | None = None, protocol: str = "synthetic",
                wise: dict[float, tuple[float, float, float]] | None = None) -> dict:
    """A two-task run: task AP after each step, base retention AP 0.5.

    Args:
        method, seed, status, error, protocol: identity and outcome.
        final: a[2][1], a[2][2] (AP on both tasks after the last task).
        retained: z[2]["coco"] (retention AP after the last task).
        wise: alpha -> (AP task 1, AP task 2, AP coco) rows after the last task.
    """
    if status == "failed":
        return {"protocol": protocol, "method": method, "methods": method.split("+"), "seed": seed,
                "status": "failed", "error": error, "wall_time_s": 3.0}
    accuracy = [[0.10, 0.05], [0.60, 0.20], [final[0], final[1]]]
    retention = [[0.50], [0.45], [retained]]
    rows = []
    for alpha, (ap1, ap2, coco) in (wise or {}).items():
        rows += [{"method": method, "seed": seed, "train_task": "domain", "eval_set": name, "metric": "AP",
                  "value": value, "wise_alpha": alpha} for name, value in zip(TASKS + RETENTION_SETS, (ap1, ap2, coco))]
    return {"protocol": protocol, "method": method, "methods": method.split("+"), "seed": seed,
            "status": "finished", "error": None, "tasks": TASKS, "retention_sets": RETENTION_SETS,
            "accuracy_matrix": accuracy, "retention_matrix": retention, "rows": rows, "per_category_ap": {},
            "summary": {}, "wall_time_s": 60.0 + seed, "peak_memory_mb": 100.0, "trainable_params": 1_500_000,
            "total_params": 3_000_000, "git_hash": "abc", "versions": {}, "device": "cpu", "config": {}}


def write_results(folder: Path, results: list[dict]) -> list[Path]:
    """Write each result as <method>_<seed>.json; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for result in results:
        path = folder / f"{result['method']}_{result['seed']}.json"
        path.write_text(json.dumps(result))
        paths.append(path)
    return paths


def standard_results() -> list[dict]:
    """finetune (3 seeds, forgets), lora+distill (3 seeds, retains), one failed distill run."""
    results = [result_dict("finetune", s, (0.20 + 0.01 * s, 0.70), 0.10 + 0.02 * s) for s in range(3)]
    results += [result_dict("lora+distill", s, (0.40 + 0.02 * s, 0.45), 0.48 - 0.01 * s,
                            wise={0.5: (0.45, 0.5, 0.49), 1.0: (0.5, 0.55, 0.47)}) for s in range(3)]
    results.append(result_dict("distill", 0, (0, 0), 0, status="failed",
                               error="RuntimeError: CUDA out of memory\nTraceback ..."))
    return results

