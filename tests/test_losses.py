"""YOLO-World loss: hand-worked CIoU/DFL, edge cases, scaling, gradients, and a fit-one-box run.

Heads are plain tensors on one or two small levels (stride 8 4x4, stride 16 2x2);
`head_outputs` builds consistent (cls_logits, bbox_preds, bbox_dists) lists.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from cl_detect.engine._box_ops import _ciou_terms, encode_distances, make_priors
from cl_detect.engine.losses import (YOLOWorldLoss, bbox_ciou, decode_boxes, distribution_focal_loss,
                                     soft_sigmoid_focal_loss)

REG_MAX = 16
SHAPES, STRIDES = [(4, 4), (2, 2)], [8, 16]


def expectation(dists: torch.Tensor) -> torch.Tensor:
    """(B, 4*reg_max, H, W) DFL logits -> (B, 4, H, W) expected distances."""
    batch, _, height, width = dists.shape
    probs = dists.reshape(batch, 4, REG_MAX, height, width).softmax(2)
    return (probs * torch.arange(REG_MAX, dtype=dists.dtype).view(1, 1, -1, 1, 1)).sum(2)


def head_outputs(batch: int, num_texts: int, seed: int = 0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    cls = [torch.randn(batch, num_texts, h, w, generator=generator, dtype=dtype) for h, w in SHAPES]
    dists = [torch.randn(batch, 4 * REG_MAX, h, w, generator=generator, dtype=dtype) for h, w in SHAPES]
    return cls, [expectation(d) for d in dists], dists


def targets(rows, mask=None):
    boxes = torch.tensor([[r[:4] for r in image] for image in rows], dtype=torch.float32).reshape(len(rows), -1, 4)
    labels = torch.tensor([[r[4] for r in image] for image in rows], dtype=torch.long).reshape(len(rows), -1)
    mask = torch.ones(labels.shape, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return boxes, labels, mask


def loss_fn(**kwargs):
    return YOLOWorldLoss(strides=STRIDES, **kwargs)


def test_ciou_hand_worked():
    # IoU = 2 / 14; centres (2, 1) and (2, 3): rho^2 = 4; enclosing box 4 x 5: c^2 = 41.
    v = 4 / math.pi**2 * (math.atan(2 / 4) - math.atan(4 / 2)) ** 2
    iou = 1 / 7
    expected = iou - 4 / 41 - v / (1 - iou + v) * v
    value = bbox_ciou(torch.tensor([0.0, 0, 4, 2]), torch.tensor([1.0, 1, 3, 5]))
    assert value.item() == pytest.approx(expected, abs=1e-6)
    same = bbox_ciou(torch.tensor([1.0, 2, 5, 9]), torch.tensor([1.0, 2, 5, 9]))
    assert same.item() == pytest.approx(1.0, abs=1e-6)


def test_dfl_hand_worked():
    logits = torch.tensor([0.0, 1.0, 2.0, 0.0])
    log_z = math.log(1 + math.e + math.e**2 + 1)
    expected = 0.7 * (log_z - 1.0) + 0.3 * (log_z - 2.0)  # target 1.3: bins 1 and 2
    assert distribution_focal_loss(logits, torch.tensor(1.3)).item() == pytest.approx(expected, rel=1e-6)


def test_decode_encode_round_trip():
    points = torch.tensor([[12.0, 20.0]])
    boxes = decode_boxes(points, torch.tensor([[2.0, 3.0, 4.0, 5.0]]))
    assert boxes.tolist() == [[10.0, 17.0, 16.0, 25.0]]
    assert encode_distances(points, boxes, 15).tolist() == [[2.0, 3.0, 4.0, 5.0]]
    clamped = encode_distances(points, torch.tensor([[30.0, 0.0, 40.0, 50.0]]), 15)
    assert torch.allclose(clamped, torch.tensor([[0.0, 14.99, 14.99, 14.99]]))


def test_image_without_gt_is_pure_negative_bce():
    cls, preds, dists = head_outputs(2, 3)
    out = loss_fn(world_size=2)(cls, preds, dists, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long),
                                torch.zeros(2, 0, dtype=torch.bool))
    assert out["loss_bbox"].item() == 0.0 and out["loss_dfl"].item() == 0.0
    negatives = sum(F.binary_cross_entropy_with_logits(c, torch.zeros_like(c), reduction="sum") for c in cls)
    assert out["loss_cls"].item() == pytest.approx(0.5 * negatives.item() * 2 * 2, rel=1e-6)
    assert out["num_pos"].item() == 0


def test_perfect_predictions_minimise_ciou_and_dfl():
    gt = [2.0, 3.0, 21.0, 17.0]
    points, strides = make_priors(SHAPES, STRIDES)
    distances = encode_distances(points / strides, torch.tensor(gt) / strides, REG_MAX - 1)  # (A, 4)
    left = distances.floor().long()
    probs = torch.zeros(len(points), 4, REG_MAX)
    probs.scatter_(-1, left[..., None], (left + 1 - distances)[..., None])
    probs.scatter_add_(-1, (left + 1)[..., None], (distances - left)[..., None])
    logits = probs.clamp(min=1e-30).log().permute(1, 2, 0).reshape(1, 4 * REG_MAX, -1)
    dists, start = [], 0
    for h, w in SHAPES:
        dists.append(logits[..., start:start + h * w].reshape(1, -1, h, w).requires_grad_())
        start += h * w
    cls = [torch.zeros(1, 2, h, w) for h, w in SHAPES]
    loss = loss_fn()
    gt_boxes, gt_labels, gt_mask = targets([[gt + [1]]])
    out = loss(cls, [expectation(d) for d in dists], dists, gt_boxes, gt_labels, gt_mask)
    assert out["num_pos"].item() > 0
    assert out["loss_bbox"].item() == pytest.approx(0.0, abs=1e-5)
    # DFL minimum = entropy of the two-bin split, weighted like the loss.
    fractions = (distances - left).clamp(1e-12, 1 - 1e-12)
    entropy = -(fractions * fractions.log() + (1 - fractions) * (1 - fractions).log()).sum(-1)
    scores = loss.assigner(torch.full((1, len(points), 2), 0.5), decode_boxes(points, distances * strides)[None],
                           points, gt_labels, gt_boxes, gt_mask).scores
    expected = 0.375 * (entropy * scores.sum(-1)[0]).sum() / scores.sum().clamp(min=1)
    assert out["loss_dfl"].item() == pytest.approx(expected.item(), rel=1e-4)
    out["loss_dfl"].backward()
    assert max(d.grad.abs().max().item() for d in dists) < 1e-5


def test_padded_gts_leave_loss_unchanged():
    cls, preds, dists = head_outputs(1, 3)
    rows = [[4.0, 4.0, 28.0, 20.0, 2], [10.0, 2.0, 30.0, 30.0, 0]]
    pad = [0.0, 0.0, 32.0, 32.0, 1]
    plain = loss_fn()(cls, preds, dists, *targets([rows]))
    padded = loss_fn()(cls, preds, dists, *targets([[pad] + rows + [pad]], mask=[[False, True, True, False]]))
    for key in ("loss", "loss_cls", "loss_bbox", "loss_dfl", "num_pos"):
        assert torch.allclose(plain[key].float(), padded[key].float(), rtol=1e-6), key
    assert plain["num_pos"].item() > 0


def test_scaling_by_num_imgs_and_world_size():
    cls, preds, dists = head_outputs(2, 3, seed=1)
    boxes, labels, mask = targets([[[4.0, 4.0, 28.0, 20.0, 2]], [[2.0, 6.0, 30.0, 30.0, 1]]])
    single = loss_fn()(cls, preds, dists, boxes, labels, mask)
    tripled = loss_fn(world_size=3)(cls, preds, dists, boxes, labels, mask)
    for key in ("loss_cls", "loss_bbox", "loss_dfl"):
        assert tripled[key].item() == pytest.approx(3 * single[key].item(), rel=1e-6)

    # Batch of 2 vs two batches of 1: L = 2 * (U1 + U2) / max(S1 + S2, 1), U_i = L_i * max(S_i, 1).
    halves = [loss_fn()([c[i:i + 1] for c in cls], [p[i:i + 1] for p in preds], [d[i:i + 1] for d in dists],
                        boxes[i:i + 1], labels[i:i + 1], mask[i:i + 1]) for i in range(2)]
    score_sum = sum(h["assigned_score_sum"] for h in halves)
    assert single["assigned_score_sum"].item() == pytest.approx(score_sum.item(), rel=1e-6)
    for key in ("loss_cls", "loss_bbox", "loss_dfl"):
        unnormalised = sum(h[key] * h["assigned_score_sum"].clamp(min=1) for h in halves)
        assert single[key].item() == pytest.approx(2 * unnormalised.item() / max(score_sum.item(), 1), rel=1e-5)
    assert single["loss_bbox"].item() > 0


def test_ciou_gradients_float64():
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(5, 2, generator=generator, dtype=torch.float64) * 4
    box1 = torch.cat([corner, corner + 1 + torch.rand(5, 2, generator=generator, dtype=torch.float64) * 3], -1)
    box2 = box1 + torch.rand(5, 4, generator=generator, dtype=torch.float64) - 0.5
    assert torch.autograd.gradcheck(lambda a, b: _ciou_terms(a, b, 1e-7),
                                    (box1.requires_grad_(), box2.requires_grad_()))
    # The loss treats alpha as a constant: its gradient must equal that of the
    # terms combined with a frozen alpha.
    iou, centre, aspect = _ciou_terms(box1, box2, 1e-7)
    alpha = (aspect / (aspect - iou + 1 + 1e-7)).detach()
    reference = torch.autograd.grad((iou - centre - alpha * aspect).sum(), box1)[0]
    assert torch.allclose(torch.autograd.grad(bbox_ciou(box1, box2).sum(), box1)[0], reference)


def test_dfl_and_cls_gradients_with_fixed_assignment():
    loss = loss_fn(reg_max=REG_MAX)
    cls, preds, dists = head_outputs(1, 2, seed=2, dtype=torch.float64)
    points, strides = make_priors(SHAPES, STRIDES, dtype=torch.float64)
    logits = torch.cat([c.flatten(2) for c in cls], 2).transpose(1, 2).clone().requires_grad_()
    flat_dist = loss._flatten_dists(dists).clone().requires_grad_()
    pred_boxes = decode_boxes(points, torch.cat([p.flatten(2) for p in preds], 2).transpose(1, 2) * strides)
    gt_boxes, gt_labels, gt_mask = targets([[[4.0, 4.0, 28.0, 20.0, 1]]])
    fixed = loss.assigner(logits.detach().sigmoid(), pred_boxes, points, gt_labels, gt_boxes.double(), gt_mask)
    assert fixed.fg_mask.any()
    for kind in ("bce", "focal"):
        loss.cls_loss = kind
        assert torch.autograd.gradcheck(
            lambda x, d: loss.losses_from_assignment(x, pred_boxes, d, points, strides, fixed)["loss"],
            (logits, flat_dist), fast_mode=True)


def test_focal_matches_standard_focal_on_hard_targets():
    logits = torch.randn(50)
    hard = (torch.rand(50) > 0.5).float()
    expected = sigmoid_focal_loss(logits, hard, alpha=0.25, gamma=2.0)
    assert torch.allclose(soft_sigmoid_focal_loss(logits, hard), expected, atol=1e-7)
    soft = torch.full((1,), 0.3)
    assert soft_sigmoid_focal_loss(torch.logit(soft), soft).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        YOLOWorldLoss(cls_loss="ce")


def test_adam_fits_one_box():
    shapes, gt = [(4, 4)], [5.0, 6.0, 25.0, 22.0]
    loss = YOLOWorldLoss(strides=[8])
    cls = torch.zeros(1, 2, 4, 4, requires_grad=True)
    dists = torch.zeros(1, 4 * REG_MAX, 4, 4, requires_grad=True)
    optimizer = torch.optim.Adam([cls, dists], lr=0.05)
    gt_targets = targets([[gt + [0]]])
    history = []
    for _ in range(300):
        out = loss([cls], [expectation(dists)], [dists], *gt_targets)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append(out["loss"].item())
    assert history[-1] < 0.15 * history[0]
    points, strides = make_priors(shapes, [8])
    best = cls[0, 0].flatten().argmax()
    box = decode_boxes(points[best], expectation(dists).detach()[0, :, best // 4, best % 4] * 8)
    assert bbox_ciou(box, torch.tensor(gt)).item() > 0.95
