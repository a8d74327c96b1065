"""Task-aligned assigner on hand-built 4x4 grids (stride 8, 32-px image, 16 priors).

Prior i sits at ((i % 4 + 0.5) * 8, (i // 4 + 0.5) * 8): centres 4, 12, 20, 28.
Expected CIoU values come from `ciou_by_hand`, the paper's formula in plain
Python, independent of the tensor code.
"""
import math

import pytest
import torch

from cl_detect.engine._box_ops import make_priors
from cl_detect.engine.assigner import TaskAlignedAssigner

POINTS, _ = make_priors([(4, 4)], [8])
NUM_CLASSES = 3


def ciou_by_hand(box1, box2, eps=1e-7):
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = box1, box2
    overlap = max(min(ax2, bx2) - max(ax1, bx1), 0) * max(min(ay2, by2) - max(ay1, by1), 0)
    wa, ha, wb, hb = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    iou = overlap / (wa * ha + wb * hb - overlap + eps)
    diag2 = (max(ax2, bx2) - min(ax1, bx1)) ** 2 + (max(ay2, by2) - min(ay1, by1)) ** 2 + eps
    rho2 = ((ax1 + ax2 - bx1 - bx2) ** 2 + (ay1 + ay2 - by1 - by2) ** 2) / 4
    v = 4 / math.pi**2 * (math.atan(wb / (hb + eps)) - math.atan(wa / (ha + eps))) ** 2
    alpha = v / (v - iou + 1 + eps)
    return iou - rho2 / diag2 - alpha * v


def grid_inputs(default_box, score=0.5):
    """Scores (1, 16, C) all `score` and every prior predicting `default_box`."""
    scores = torch.full((1, 16, NUM_CLASSES), score)
    boxes = torch.tensor(default_box, dtype=torch.float32).repeat(1, 16, 1)
    return scores, boxes


def test_make_priors_row_major_levels_concatenated():
    points, strides = make_priors([(2, 3), (1, 1)], [8, 16])
    assert points.shape == (7, 2) and strides.shape == (7, 1)
    assert points[:4].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12]]
    assert points[6].tolist() == [8, 8] and strides[:, 0].tolist() == [8] * 6 + [16]


def test_single_gt_candidates_topk_and_targets():
    gt = [0.0, 0.0, 20.0, 16.0]  # priors at x = 20 lie on the edge: not candidates
    scores, boxes = grid_inputs(gt, score=0.95)  # non-candidates look perfect on purpose
    chosen = {0: ([0, 0, 20, 8], 0.95), 1: ([0, 0, 19, 15], 0.9), 4: ([2, 0, 20, 16], 0.6), 5: (gt, 0.1)}
    for prior, (box, score) in chosen.items():
        boxes[0, prior] = torch.tensor(box)
        scores[0, prior, 1] = score
    result = TaskAlignedAssigner(topk=2)(scores, boxes, POINTS, torch.tensor([[1]]),
                                         torch.tensor([[gt]]), torch.tensor([[True]]))

    metric = {p: math.sqrt(s) * max(ciou_by_hand(gt, b), 0) ** 6 for p, (b, s) in chosen.items()}
    # By hand: prior 1 (CIoU .890, score .9) and prior 4 (CIoU .898, score .6) beat
    # prior 5 (perfect box, score .1) and prior 0 (best score, half-height box).
    # The best metric (prior 1) and the best overlap (prior 4) differ on purpose.
    assert sorted(metric, key=metric.get, reverse=True)[:2] == [1, 4]
    assert result.fg_mask[0].nonzero().flatten().tolist() == [1, 4]
    best_overlap = ciou_by_hand(gt, chosen[4][0])
    assert best_overlap > ciou_by_hand(gt, chosen[1][0])
    for prior in (1, 4):
        expected = metric[prior] * best_overlap / (metric[1] + 1e-9)
        assert torch.allclose(result.scores[0, prior], torch.tensor([0, expected, 0]), atol=1e-6)
        assert result.labels[0, prior] == 1
        assert result.boxes[0, prior].tolist() == gt
    assert result.scores[0, [0, 2, 3, 5, 6, 7]].abs().sum() == 0

    # With topk above the number of candidates every candidate is positive, none else.
    everything = TaskAlignedAssigner(topk=10)(scores, boxes, POINTS, torch.tensor([[1]]),
                                              torch.tensor([[gt]]), torch.tensor([[True]]))
    assert everything.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 4, 5]


def test_prior_claimed_by_two_gts_keeps_higher_overlap():
    small, large = [0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]
    scores, boxes = grid_inputs(large)
    boxes[0, [0, 1, 4]] = torch.tensor(small)
    boxes[0, 5] = torch.tensor([0.0, 0.0, 30.0, 30.0])  # inside both GTs, fits the large one
    result = TaskAlignedAssigner(topk=16)(scores, boxes, POINTS, torch.tensor([[0, 2]]),
                                          torch.tensor([[small, large]]), torch.tensor([[True, True]]))
    assert ciou_by_hand(large, [0, 0, 30, 30]) > ciou_by_hand(small, [0, 0, 30, 30])
    assert result.fg_mask.all()
    assert result.gt_index[0, [0, 1, 4]].tolist() == [0, 0, 0]
    assert result.gt_index[0, 5] == 1 and result.labels[0, 5] == 2
    assert result.scores[0, 5, 0] == 0 and result.scores[0, 5, 2] > 0
    assert ((result.scores[0] > 0).sum(-1) == 1).all()  # one class per positive prior


def test_non_claiming_gt_never_takes_a_prior():
    # Prior 5 (12, 12) is claimed by two large GTs; a third GT fits its predicted
    # box best but does not contain its centre, so it must not receive it.
    gts = [[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 24.0, 24.0], [13.0, 13.0, 31.0, 31.0]]
    scores, boxes = grid_inputs([0.0, 0.0, 2.0, 2.0])
    boxes[0, 5] = torch.tensor([12.5, 12.5, 31.0, 31.0])
    result = TaskAlignedAssigner(topk=16)(scores, boxes, POINTS, torch.tensor([[0, 1, 2]]),
                                          torch.tensor([gts]), torch.ones(1, 3, dtype=torch.bool))
    overlaps = [ciou_by_hand(gt, [12.5, 12.5, 31.0, 31.0]) for gt in gts]
    assert overlaps[2] > max(overlaps[:2])
    assert result.fg_mask[0, 5]
    assert result.gt_index[0, 5] == (0 if overlaps[0] > overlaps[1] else 1)


def test_padded_gts_are_never_assigned():
    gt = [[0.0, 0.0, 20.0, 16.0]]
    pad = [[0.0, 0.0, 32.0, 32.0]]  # would swallow every prior if it counted
    scores, boxes = grid_inputs([0.0, 0.0, 32.0, 32.0])
    assigner = TaskAlignedAssigner(topk=16)
    plain = assigner(scores, boxes, POINTS, torch.tensor([[1]]), torch.tensor([gt]), torch.tensor([[True]]))
    padded = assigner(scores, boxes, POINTS, torch.tensor([[7, 1, 9]]), torch.tensor([pad + gt + pad]),
                      torch.tensor([[False, True, False]]))
    assert (padded.gt_index[padded.fg_mask] == 1).all()
    assert torch.equal(padded.fg_mask, plain.fg_mask)
    assert torch.allclose(padded.scores, plain.scores)
    assert torch.equal(padded.labels, plain.labels)
    assert torch.equal(padded.boxes[padded.fg_mask], plain.boxes[plain.fg_mask])


def test_no_gt_gives_all_background():
    scores, boxes = grid_inputs([0.0, 0.0, 16.0, 16.0])
    assigner = TaskAlignedAssigner()
    for gt_boxes, gt_mask in [(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool)),
                              (torch.tensor([[[0.0, 0.0, 16.0, 16.0]] * 2]), torch.zeros(1, 2, dtype=torch.bool))]:
        result = assigner(scores, boxes, POINTS, torch.zeros(gt_mask.shape, dtype=torch.long), gt_boxes, gt_mask)
        assert not result.fg_mask.any()
        assert result.scores.shape == (1, 16, NUM_CLASSES) and result.scores.abs().sum() == 0


def test_batched_assignment_equals_per_image():
    generator = torch.Generator().manual_seed(3)
    batch, num_gt = 3, 4
    scores = torch.rand(batch, 16, NUM_CLASSES, generator=generator)
    distances = torch.rand(batch, 16, 4, generator=generator) * 14 + 1
    boxes = torch.cat([POINTS - distances[..., :2], POINTS + distances[..., 2:]], dim=-1)
    corners = torch.rand(batch, num_gt, 2, generator=generator) * 16
    gt_boxes = torch.cat([corners, corners + 4 + torch.rand(batch, num_gt, 2, generator=generator) * 16], -1)
    gt_labels = torch.randint(0, NUM_CLASSES, (batch, num_gt), generator=generator)
    gt_mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    assigner = TaskAlignedAssigner(topk=3)
    batched = assigner(scores, boxes, POINTS, gt_labels, gt_boxes, gt_mask)
    assert batched.fg_mask[0].sum() >= 3
    for image in range(batch):
        keep = gt_mask[image]
        single = assigner(scores[image:image + 1], boxes[image:image + 1], POINTS, gt_labels[image:image + 1, keep],
                          gt_boxes[image:image + 1, keep], gt_mask[image:image + 1, keep])
        assert torch.equal(single.fg_mask[0], batched.fg_mask[image])
        assert torch.allclose(single.scores[0], batched.scores[image])
        fg = single.fg_mask[0]
        assert torch.equal(single.boxes[0, fg], batched.boxes[image, fg])


def test_a_label_outside_the_prompts_names_the_row_not_an_index_error():
    scores, boxes = grid_inputs([0.0, 0.0, 16.0, 16.0])
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]] * 3])
    mask = torch.tensor([[True, True, False]])
    assigner = TaskAlignedAssigner()
    for bad in (NUM_CLASSES, -1):
        with pytest.raises(ValueError, match=rf"GT label {bad} \(image 0, GT row 1\) is outside the 3 prompts"):
            assigner(scores, boxes, POINTS, torch.tensor([[0, bad, 0]]), gt_boxes, mask)
    padded = assigner(scores, boxes, POINTS, torch.tensor([[0, 1, 99]]), gt_boxes, mask)  # padding may hold anything
    assert padded.fg_mask.any()
