"""Evaluation: COCO / LVIS detection statistics and continual-learning metrics.

- `evaluate_coco` / `CocoEvaluator`: pycocotools bbox rules (backend
  "pycocotools", or "fast" with identical statistics).
- `evaluate_lvis`: lvis-api federated rules, 300 dets/image or Fixed AP.
- `continual_summary` and the single metrics: see docs/metrics.md.

Names are imported on first use: the lvis package pulls in cv2 and matplotlib
and configures the root logger, which plain metric users should not pay for.
"""
import importlib

_EXPORTS = {
    "CocoEvaluator": "cl_detect.eval.coco_eval",
    "evaluate_coco": "cl_detect.eval.coco_eval",
    "evaluate_lvis": "cl_detect.eval.lvis_eval",
    "continual_summary": "cl_detect.eval.continual",
    "in_domain_avg": "cl_detect.eval.continual",
    "forgetting": "cl_detect.eval.continual",
    "backward_transfer": "cl_detect.eval.continual",
    "zero_shot_transfer": "cl_detect.eval.continual",
    "retention_ratio": "cl_detect.eval.continual",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cl_detect.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
