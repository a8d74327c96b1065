"""Vectorised COCO bbox evaluation with exactly pycocotools' statistics.

pycocotools spends its time in Python loops over every (image, category,
area range) and every detection. The rules themselves are simple, so this
backend applies them to all (image, category) groups at once:

- IoU as pycocotools' C `bbIou` computes it (same float operations, so the
  same doubles; a crowd box divides by the detection's area).
- Per group, detections sorted by score (stable, ties by input order) and cut
  at the largest maxDets; ground truth in file order.
- Greedy matching, one detection rank at a time across all groups, vectorised
  over area ranges, IoU thresholds and ground-truth boxes. A detection takes
  the not-yet-matched regular box with the highest IoU >= threshold (ties go
  to the later box, as pycocotools' `>=` scan does); only when none exists may
  it take an ignored box (crowd, or outside the area range); crowd boxes can
  be matched any number of times. A match to an ignored box, or an unmatched
  detection outside the area range, is ignored.
- Accumulation per category, area range and maxDets: stable sort by score
  over images in id order, cumulative TP/FP, the precision envelope and
  101-point interpolation, with the same float expressions as pycocotools.

The arrays returned have pycocotools' layout, so the same summary code reads
both backends. tests/test_eval_coco.py checks equality on real and random data.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import Params

from cl_detect.eval._detections import DetectionColumns


def _box_iou(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of det[i] against gt[i, g], both xywh float64, as pycocotools' bbIou."""
    dx, dy, dw, dh = (det[:, k, None] for k in range(4))
    gx, gy, gw, gh = (gt[..., k] for k in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    union = np.where(crowd, dw * dh, (dw * dh + gw * gh) - inter)
    overlap = (w > 0) & (h > 0)
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=overlap)
    return iou


def _last_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the last maximum along the last axis (pycocotools keeps the later tie)."""
    return values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)


def _match_bucket(gt_box, gt_crowd, gt_ignore, gt_valid, gt_id_nonzero, det_row, det_rank, det_box, thresholds):
    """Greedy matching for groups padded to one ground-truth width.

    Returns, per detection, (A, T) flags: matched (to a box with a non-zero id,
    pycocotools' `dtm != 0`) and matched-to-an-ignored-box.
    """
    n_det = len(det_row)
    n_area, n_thr = gt_ignore.shape[1], len(thresholds)
    matched_gt = np.zeros(gt_ignore.shape[:2] + (n_thr, gt_box.shape[1]), dtype=bool)
    det_matched = np.zeros((n_det, n_area, n_thr), dtype=bool)
    det_on_ignored = np.zeros((n_det, n_area, n_thr), dtype=bool)
    order = np.argsort(det_rank, kind="stable")
    bounds = np.searchsorted(det_rank[order], np.arange(det_rank.max() + 2))
    for rank in range(len(bounds) - 1):
        dets = order[bounds[rank]:bounds[rank + 1]]
        rows = det_row[dets]
        crowd = gt_crowd[rows]
        iou = _box_iou(det_box[dets], gt_box[rows], crowd)[:, None, None, :]
        usable = ((~matched_gt[rows] | crowd[:, None, None, :]) & gt_valid[rows][:, None, None, :]
                  & (iou >= thresholds[None, None, :, None]))
        ignored = gt_ignore[rows][:, :, None, :]
        regular = usable & ~ignored
        fallback = usable & ignored
        has_regular = regular.any(-1)
        pick = np.where(has_regular, _last_argmax(np.where(regular, iou, -1.0)),
                        _last_argmax(np.where(fallback, iou, -1.0)))
        found = has_regular | fallback.any(-1)
        i, a, t = np.nonzero(found)
        g = pick[i, a, t]
        matched_gt[rows[i], a, t, g] = True
        det_matched[dets[i], a, t] = gt_id_nonzero[rows[i], g]
        det_on_ignored[dets[i], a, t] = gt_ignore[rows[i], a, g]
    return det_matched, det_on_ignored


def _lookup(sorted_keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each value in sorted unique keys, and whether it is there at all."""
    index = np.searchsorted(sorted_keys, values)
    if not len(sorted_keys):
        return index, np.zeros(len(values), dtype=bool)
    return index, sorted_keys[np.minimum(index, len(sorted_keys) - 1)] == values


def _pad_groups(rows: np.ndarray, n_rows: int, values: np.ndarray, width: int, fill) -> np.ndarray:
    """Scatter per-gt values into (n_rows, width, ...); `rows` is non-decreasing (gts in group order)."""
    starts = np.searchsorted(rows, np.arange(n_rows))
    slot = np.arange(len(rows)) - starts[rows]
    out = np.full((n_rows, width) + values.shape[1:], fill, dtype=values.dtype)
    out[rows, slot] = values
    return out


class _GroundTruth(NamedTuple):
    """Ground-truth boxes sorted by group (category-major, then image), file order inside a group."""

    group: np.ndarray  # (G,) category_index * num_images + image_index
    box: np.ndarray  # (G, 4) xywh
    crowd: np.ndarray  # (G,)
    id_nonzero: np.ndarray  # (G,) pycocotools records matches by id, so id 0 reads as unmatched
    ignore: np.ndarray  # (G, A) crowd, or `area` outside the area range


class _Detections(NamedTuple):
    """Detections sorted by group, then score (stable), cut at the largest maxDets per group."""

    group: np.ndarray
    score: np.ndarray
    box: np.ndarray
    rank: np.ndarray  # position inside the group, 0 = highest score


def _ground_truth(coco_gt: COCO, img_ids: np.ndarray, cat_ids: np.ndarray, area_rng: np.ndarray) -> _GroundTruth:
    anns = coco_gt.dataset["annotations"]
    img_index, img_found = _lookup(img_ids, np.array([a["image_id"] for a in anns], dtype=np.int64))
    cat_index, cat_found = _lookup(cat_ids, np.array([a["category_id"] for a in anns], dtype=np.int64))
    keep = img_found & cat_found
    group = cat_index[keep] * len(img_ids) + img_index[keep]
    order = np.argsort(group, kind="stable")
    kept = [a for a, k in zip(anns, keep.tolist()) if k]
    anns = [kept[i] for i in order]
    area = np.array([a["area"] for a in anns], dtype=np.float64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    return _GroundTruth(
        group=group[order],
        box=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
        crowd=crowd,
        id_nonzero=np.array([a["id"] != 0 for a in anns], dtype=bool),
        ignore=crowd[:, None] | (area[:, None] < area_rng[:, 0]) | (area[:, None] > area_rng[:, 1]),
    )


def _ranked_detections(detections: DetectionColumns, img_ids: np.ndarray, cat_ids: np.ndarray,
                       max_det: int) -> _Detections:
    cat_index, known = _lookup(cat_ids, detections.category_ids)
    group = cat_index[known] * len(img_ids) + np.searchsorted(img_ids, detections.image_ids[known])
    score, box = detections.scores[known], detections.boxes[known]
    order = np.argsort(-score, kind="stable")
    order = order[np.argsort(group[order], kind="stable")]
    group, score, box = group[order], score[order], box[order]
    rank = np.arange(len(group)) - np.searchsorted(group, group, side="left")
    capped = rank < max_det
    return _Detections(group[capped], score[capped], box[capped], rank[capped])


def _match_all(gt: _GroundTruth, dets: _Detections, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D, A, T) matched and matched-to-ignored flags for all detections."""
    shape = (len(dets.group), gt.ignore.shape[1], len(thresholds))
    det_matched, det_on_ignored = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    groups, gt_group_index, gt_counts = np.unique(gt.group, return_inverse=True, return_counts=True)
    det_group_index, has_gt = _lookup(groups, dets.group)
    # pad groups to power-of-two widths so a few crowded images do not widen every group
    width_of_group = 1 << np.ceil(np.log2(gt_counts)).astype(np.int64)
    for width in np.unique(width_of_group):
        members = np.nonzero(width_of_group == width)[0]
        row_of_group = np.full(len(groups), -1)
        row_of_group[members] = np.arange(len(members))
        gt_sel = np.nonzero(row_of_group[gt_group_index] >= 0)[0]
        gt_rows = row_of_group[gt_group_index[gt_sel]]
        det_sel = np.nonzero(has_gt)[0]
        det_sel = det_sel[row_of_group[det_group_index[det_sel]] >= 0]
        if not len(det_sel):
            continue

        def pad(values, fill):
            return _pad_groups(gt_rows, len(members), values[gt_sel], int(width), fill)

        matched, on_ignored = _match_bucket(
            pad(gt.box, 0.0), pad(gt.crowd, False), pad(gt.ignore, True).transpose(0, 2, 1),
            pad(np.ones(len(gt.box), bool), False), pad(gt.id_nonzero, False),
            row_of_group[det_group_index[det_sel]], dets.rank[det_sel], dets.box[det_sel], thresholds)
        det_matched[det_sel] = matched
        det_on_ignored[det_sel] = on_ignored
    return det_matched, det_on_ignored


def evaluate_bbox(coco_gt: COCO, detections: DetectionColumns, params: Params) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate bbox detections; same precision/recall arrays as COCOeval.accumulate.

    Args:
        coco_gt: the ground truth (crowd boxes are ignore regions; the `area`
            field decides the area range, as in pycocotools).
        detections: detections whose image ids are all in `params.imgIds`;
            categories outside `params.catIds` are dropped, as pycocotools does.
        params: pycocotools bbox `Params` (imgIds, catIds, iouThrs, recThrs,
            maxDets, areaRng).

    Returns:
        precision (T, R, K, A, M) and recall (T, K, A, M), -1 where a category
        has no ground truth in that area range.
    """
    img_ids = np.unique(np.asarray(params.imgIds, dtype=np.int64))
    cat_ids = np.unique(np.asarray(params.catIds, dtype=np.int64))
    max_dets = sorted(params.maxDets)
    area_rng = np.asarray(params.areaRng, dtype=np.float64)
    rec_thrs = np.asarray(params.recThrs)
    n_img, n_cat, n_area, n_rec = len(img_ids), len(cat_ids), len(area_rng), len(rec_thrs)
    thresholds = np.minimum(np.asarray(params.iouThrs), 1 - 1e-10)
    n_thr = len(thresholds)

    gt = _ground_truth(coco_gt, img_ids, cat_ids, area_rng)
    dets = _ranked_detections(detections, img_ids, cat_ids, max_dets[-1])
    det_matched, det_on_ignored = _match_all(gt, dets, thresholds)
    det_area = dets.box[:, 2] * dets.box[:, 3]
    out_of_range = (det_area[:, None] < area_rng[:, 0]) | (det_area[:, None] > area_rng[:, 1])
    det_ignored = det_on_ignored | (~det_matched & out_of_range[:, :, None])
    true_pos = det_matched & ~det_ignored
    false_pos = ~det_matched & ~det_ignored

    # per category, stable by score over the (image, rank) order: pycocotools' concatenation + mergesort
    det_cat = dets.group // n_img
    order = np.argsort(-dets.score, kind="stable")
    order = order[np.argsort(det_cat[order], kind="stable")]
    rank, true_pos, false_pos = dets.rank[order], true_pos[order], false_pos[order]
    cat_bounds = np.searchsorted(det_cat[order], np.arange(n_cat + 1))
    num_gt = np.zeros((n_cat, n_area), dtype=np.int64)
    np.add.at(num_gt, gt.group // n_img, ~gt.ignore)

    precision = -np.ones((n_thr, n_rec, n_cat, n_area, len(max_dets)))
    recall = -np.ones((n_thr, n_cat, n_area, len(max_dets)))
    for k in range(n_cat):
        lo, hi = cat_bounds[k], cat_bounds[k + 1]
        for a in range(n_area):
            if num_gt[k, a] == 0:
                continue
            for m, max_det in enumerate(max_dets):
                within = rank[lo:hi] < max_det
                tp_sum = np.cumsum(true_pos[lo:hi, a][within].T, axis=1).astype(float)
                fp_sum = np.cumsum(false_pos[lo:hi, a][within].T, axis=1).astype(float)
                n_dets = tp_sum.shape[1]
                rc = tp_sum / num_gt[k, a]
                pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if n_dets else 0
                envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(n_thr):
                    at = np.searchsorted(rc[t], rec_thrs, side="left")
                    found = at < n_dets
                    precision[t, :, k, a, m] = 0.0
                    precision[t, found, k, a, m] = envelope[t, at[found]]
    return precision, recall
