"""LVIS bbox evaluation with the lvis-api's federated rules.

Two protocols, named in the result's "protocol" field:

- "lvis-300dets" (the lvis-api default): at most `max_dets` detections per
  image (highest scores), AP over all categories with APr/APc/APf by
  frequency group.
- "fixed-ap-10000" (Dave et al. 2021, "Evaluating Large-Vocabulary Object
  Detectors: The Devil is in the Details"): no per-image cap; instead the
  `dets_per_category` highest-scoring detections of each category over the
  whole dataset are kept (capped here, before the lvis-api sees them), then
  LVISEval runs with max_dets=-1.

Federated rules (lvis-api): a detection counts only on images where its
category is annotated as present or listed in `neg_category_ids`; unmatched
detections of a category in `not_exhaustive_category_ids` are ignored.
Ground truth without these lists (a COCO file) or lacking another key the
lvis-api reads is a ValueError naming the file and the first such record.
`image_ids` scores a subset of the file's images (as LVISEval's
params.img_ids does): the images left out are not counted as missed.

The lvis package is imported inside the functions: importing it loads cv2
and matplotlib. lvis 0.5.3 calls `np.float`, removed in NumPy 1.24; `lvis_numpy_compat()`
gives lvis.eval a NumPy view where `float` is the builtin (the float64 alias it
always was), changing nothing else.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cl_detect.data.records import Vocabulary
from cl_detect.eval._detections import DetectionColumns, check_ids, to_columns
from cl_detect.eval.coco_eval import by_name, check_gt_keys, check_gt_values, read_json

if TYPE_CHECKING:
    from lvis import LVIS, LVISResults

FIXED_AP_DETS_PER_CATEGORY = 10_000
# What the lvis-api reads from every record (LVIS._create_index, LVISEval._prepare, evaluate_img).
LVIS_REQUIRED_KEYS = {
    "images": ("id", "neg_category_ids", "not_exhaustive_category_ids"),
    "categories": ("id", "name", "frequency"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area"),
}
LVIS_KEYS_FIX = ("add it to every record: the lvis-api reads images' id, neg_category_ids and "
                 "not_exhaustive_category_ids, categories' id, name and frequency ('r', 'c' or 'f'), and "
                 "annotations' id, image_id, category_id, bbox and area")


class _NumpyWithFloat(types.ModuleType):
    float = float

    def __getattr__(self, name):
        return getattr(np, name)


@contextlib.contextmanager
def lvis_numpy_compat() -> Iterator[None]:
    """Run lvis-api code on NumPy >= 1.24 (it uses the removed `np.float`); its logging muted."""
    import lvis.eval as lvis_eval_module

    original = lvis_eval_module.np
    if not hasattr(np, "float"):
        lvis_eval_module.np = _NumpyWithFloat("numpy")
    logger = logging.getLogger("lvis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # lvis calls the deprecated Logger.warn on every results list
            warnings.filterwarnings("ignore", message="The 'warn' method is deprecated", category=DeprecationWarning)
            yield
    finally:
        lvis_eval_module.np = original
        logger.setLevel(level)


def check_lvis_gt(dataset, source: str) -> None:
    """Raise a ValueError if `dataset` is not LVIS ground truth or a record lacks a key the lvis-api
    reads or has a value it would misread (see `check_gt_values`).

    Args:
        dataset: the parsed annotation file.
        source: how to name it in errors (its path).
    """
    images = dataset.get("images") if isinstance(dataset, dict) else None
    if isinstance(images, list) and images and not any("neg_category_ids" in image for image in images):
        raise ValueError(
            f"{source}: not an LVIS annotation file: none of its {len(images)} images has neg_category_ids, "
            "which the federated rules need; score COCO-format ground truth with COCO rules (drop --lvis from "
            "cl-detect eval, or call evaluate_coco)")
    check_gt_keys(dataset, source, LVIS_REQUIRED_KEYS, LVIS_KEYS_FIX)
    check_gt_values(dataset, source, crowd=False)


def load_lvis_gt(gt: str | Path | dict | LVIS) -> LVIS:
    """Return an lvis-api LVIS object from a path, a dataset dict (copied) or an LVIS object.

    Raises:
        ValueError: the file is not LVIS ground truth, or a record lacks a key the lvis-api reads.
    """
    from lvis import LVIS

    if isinstance(gt, LVIS):
        check_lvis_gt(gt.dataset, "the ground truth")
        return gt
    if isinstance(gt, (str, Path)):
        dataset, source = read_json(gt), str(gt)
    else:
        dataset, source = copy.deepcopy(dict(gt)), "the ground-truth dict"
    check_lvis_gt(dataset, source)
    # LVIS() only reads files; build the same object from the dict
    lvis_gt = LVIS.__new__(LVIS)
    lvis_gt.logger = logging.getLogger("lvis.lvis")
    lvis_gt.dataset = dataset
    with lvis_numpy_compat():
        lvis_gt._create_index()
    return lvis_gt


def cap_detections_per_category(detections: DetectionColumns, limit: int = FIXED_AP_DETS_PER_CATEGORY
                                ) -> DetectionColumns:
    """Keep the `limit` highest-scoring detections of each category over the whole dataset.

    Ties at the cut are broken by input order; survivors keep their input order.

    Args:
        detections: all detections of the dataset.
        limit: detections kept per category (Fixed AP: 10,000).

    Returns:
        The kept detections.
    """
    order = np.argsort(-detections.scores, kind="stable")
    order = order[np.argsort(detections.category_ids[order], kind="stable")]
    sorted_categories = detections.category_ids[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_categories, sorted_categories, side="left")
    keep = np.sort(order[rank < limit])
    return detections.subset(keep)


def _scored_images(lvis_gt: LVIS, image_ids: Iterable[int]) -> list[int]:
    """`image_ids` sorted; a ValueError names one the ground truth does not have."""
    wanted = sorted({int(i) for i in image_ids})
    unknown = [i for i in wanted if i not in lvis_gt.imgs]
    if unknown:
        raise ValueError(f"image_ids has {len(unknown)} image id(s) the LVIS ground truth does not contain (first: "
                         f"{unknown[0]}); pass ids of the annotation file's images")
    if not wanted:
        raise ValueError("image_ids is empty: no image to score; pass None to score every image of the file")
    return wanted


def _lvis_results(lvis_gt: LVIS, results: list[dict], max_dets: int) -> LVISResults:
    from lvis import LVISResults

    if results:
        return LVISResults(lvis_gt, results, max_dets=max_dets)
    # LVISResults fails on an empty list; an empty result set still scores 0 AP
    empty = LVISResults.__new__(LVISResults)
    empty.logger = logging.getLogger("lvis.results")
    empty.dataset = copy.deepcopy(lvis_gt.dataset)
    empty.dataset["annotations"] = []
    empty._create_index()
    return empty


def evaluate_lvis(gt: str | Path | dict | LVIS, detections: Sequence[Mapping] | DetectionColumns,
                  max_dets: int = 300, fixed_ap: bool = False, vocabulary: Vocabulary | None = None,
                  dets_per_category: int = FIXED_AP_DETS_PER_CATEGORY, image_ids: Iterable[int] | None = None
                  ) -> dict:
    """Score detections with the LVIS federated protocol.

    Args:
        gt: LVIS annotation file, dataset dict or lvis-api LVIS object.
        detections: a COCO-style results list (image_id, category_id, bbox
            xywh, score) or per-image dicts (image_id, boxes xyxy, scores,
            labels) with `vocabulary` mapping labels to LVIS category ids.
        max_dets: detections per image (lvis-api: 300); ignored with fixed_ap.
        fixed_ap: use Fixed AP (no per-image cap, top `dets_per_category` per category).
        vocabulary: maps per-image labels to category ids.
        dets_per_category: the Fixed AP cap per category (10,000 in the protocol).
        image_ids: score only these images of the file (default: all); detections on
            other images are dropped before any cap.

    Returns:
        A dict with protocol, AP, AP50, AP75, APs, APm, APl, APr, APc, APf,
        AR, ARs, ARm, ARl (-1 where nothing could be scored),
        `per_category_ap` (by name), `per_category_ap_by_id`, num_detections.
    """
    from lvis import LVISEval

    if fixed_ap and dets_per_category < 1:
        raise ValueError(f"dets_per_category must be positive (Fixed AP keeps 10,000), got {dets_per_category}")
    if not fixed_ap and max_dets < 1:
        # 0 made the lvis-api index an empty list; -1 silently lifted the per-image cap
        raise ValueError(f"max_dets is the number of detections kept per image (LVIS: 300), got {max_dets}; pass a "
                         "positive number, or fixed_ap=True for no per-image cap")
    lvis_gt = load_lvis_gt(gt)
    columns = to_columns(detections, vocabulary)
    check_ids(columns, lvis_gt.imgs.keys(), lvis_gt.cats.keys())
    scored_images = sorted(lvis_gt.imgs) if image_ids is None else _scored_images(lvis_gt, image_ids)
    columns = columns.subset(np.isin(columns.image_ids, scored_images))
    if fixed_ap:
        columns = cap_detections_per_category(columns, dets_per_category)
        max_dets, protocol = -1, f"fixed-ap-{dets_per_category}"
    else:
        protocol = f"lvis-{max_dets}dets"
    with lvis_numpy_compat():
        evaluator = LVISEval(lvis_gt, _lvis_results(lvis_gt, columns.to_results(), max_dets), iou_type="bbox")
        evaluator.params.max_dets = max_dets
        evaluator.params.img_ids = scored_images
        evaluator.run()
    results = evaluator.get_results()
    stats = {key: float(results[key]) for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")}
    for area in ("", "s", "m", "l"):
        stats[f"AR{area}"] = float(results[f"AR{area}@{max_dets}"])
    precision = evaluator.eval["precision"]  # (T, R, K, A)
    category_ap = []
    for k in range(precision.shape[2]):
        values = precision[:, :, k, 0]
        category_ap.append(float(np.mean(values[values > -1])) if np.any(values > -1) else -1.0)
    cat_ids = evaluator.params.cat_ids
    return {
        "protocol": protocol,
        **stats,
        "per_category_ap": by_name([lvis_gt.cats[c]["name"] for c in cat_ids], cat_ids, category_ap),
        "per_category_ap_by_id": {int(c): v for c, v in zip(cat_ids, category_ap)},
        "num_detections": len(columns),
    }
