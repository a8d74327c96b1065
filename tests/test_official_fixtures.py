"""The port reproduces the official YOLO-World v2 outputs (../shared/fixtures/yolo_world)
through the public contract: load_official_checkpoint -> text_encoder -> detector."""
import numpy as np
import pytest
import torch

from cl_detect import load_official_checkpoint
from cl_detect.data.preprocess import LetterboxInfo
from cl_detect.models.predict import postprocess

from _fixture_utils import official_state_dict, reference

TOL = 1e-4


@pytest.fixture(scope="module")
def fixture_dir(shared):
    return shared / "fixtures" / "yolo_world"


def _find(box, score, label, boxes, scores, labels, box_tol, score_tol) -> list[int]:
    """Indices of the detections in (boxes, scores, labels) that match one detection."""
    tied = np.flatnonzero(np.abs(scores - score) <= score_tol)
    return [j for j in tied if labels[j] == label and np.abs(boxes[j] - box).max() <= box_tol]


def assert_same_top_detections(ours, ref, k=100, box_tol=1e-2, score_tol=1e-5, after_tie_misses=5):
    """The top k agree: same scores in order; within each group of tied scores the
    (label, box) pairs match as sets; the tie group cut at k may differ.

    Exactly equal scores of different boxes are ordered by the sort of whichever machine
    ran NMS (PyTorch sorts with other kernels on AVX-512 CPUs), and NMS then keeps one box
    or the other and suppresses different ones after it. So the lists may part only where an official detection is missing and we
    kept, in its place, another box of its label with the same score; from there on
    `after_tie_misses` more official detections may be missing."""
    (our_boxes, our_scores, our_labels), (ref_boxes, ref_scores, ref_labels) = ours, ref
    cut = ref_scores[k - 1] if len(ref_scores) >= k else -1.0
    matched, parted = 0, None
    for i in range(min(k, len(ref_scores))):
        if abs(ref_scores[i] - cut) <= score_tol:
            continue
        if _find(ref_boxes[i], ref_scores[i], ref_labels[i], our_boxes, our_scores, our_labels, box_tol, score_tol):
            matched += 1
            continue
        if parted is None:
            swapped = [j for j in np.flatnonzero(np.abs(our_scores - ref_scores[i]) <= score_tol)
                       if our_labels[j] == ref_labels[i] and not _find(
                           our_boxes[j], our_scores[j], our_labels[j], ref_boxes, ref_scores, ref_labels,
                           box_tol, score_tol)]
            assert swapped, f"official detection {i} (label {ref_labels[i]}, box {ref_boxes[i]}) not found"
            parted = i
    if parted is None:
        np.testing.assert_allclose(our_scores[:k], ref_scores[:k], atol=score_tol, rtol=0)
    else:
        np.testing.assert_allclose(our_scores[:parted], ref_scores[:parted], atol=score_tol, rtol=0)
        assert min(k, len(ref_scores)) - matched <= after_tie_misses + 1 + np.sum(
            np.abs(ref_scores[:k] - cut) <= score_tol), f"too many official detections missing after {parted}"
    assert matched >= k // 2  # guards against a degenerate all-tied comparison


@pytest.mark.parametrize("size", ["s", "m", "l", "x"])
def test_official_outputs_are_reproduced(fixture_dir, size, capsys):
    ref = reference(fixture_dir, size)
    detector, text_encoder = load_official_checkpoint({"state_dict": official_state_dict(fixture_dir, size)})
    report = capsys.readouterr().out
    expected_detector_keys = {"s": 411, "m": 531, "l": 651, "x": 651}[size]
    assert f"loaded {expected_detector_keys}/{expected_detector_keys} detector tensors, 197/197 text tensors" in report
    assert not detector.training

    texts = [str(t) for t in ref["texts"]]
    with torch.no_grad():
        emb = text_encoder(texts)
        np.testing.assert_allclose(emb.numpy(), ref["txt_feats"][0], atol=TOL, rtol=0)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(texts)))
        out = detector(torch.from_numpy(ref["image"]), emb[None])
        if size == "s":
            feats = detector.backbone(torch.from_numpy(ref["image"]))
            for level in range(3):
                np.testing.assert_allclose(feats[level].numpy(), ref[f"backbone_{level}"], atol=TOL, rtol=0)
                np.testing.assert_allclose(out.neck_feats[level].numpy(), ref[f"neck_{level}"], atol=TOL, rtol=0)
    for level in range(3):
        np.testing.assert_allclose(out.cls_logits[level].numpy(), ref[f"cls_logits_{level}"], atol=TOL, rtol=0)
        np.testing.assert_allclose(out.bbox_preds[level].numpy(), ref[f"bbox_preds_{level}"], atol=TOL, rtol=0)

    height, width = ref["image"].shape[-2:]
    det = postprocess(out.cls_logits, out.bbox_preds, detector.strides,
                      [LetterboxInfo((1.0, 1.0), 0, 0, (height, width))])[0]
    assert len(det) == len(ref["det_scores"])
    assert_same_top_detections((det.boxes.numpy(), det.scores.numpy(), det.labels.numpy()),
                               (ref["det_bboxes"], ref["det_scores"], ref["det_labels"]))


def test_top_detection_comparison_allows_only_tie_swaps():
    """The comparison above accepts a tie swap and its aftermath, and nothing else."""
    scores = np.linspace(0.99, 0.5, 120).astype(np.float32)
    boxes = np.stack([np.arange(120.0)] * 2 + [np.arange(120.0) + 10] * 2, 1).astype(np.float32)
    labels = np.zeros(120, dtype=np.int64)
    ref = (boxes, scores, labels)
    assert_same_top_detections(ref, ref)
    moved = boxes.copy()
    moved[40] += 5  # ours kept another box of the same label and score at 40: a tie swap
    assert_same_top_detections((moved, scores, labels), ref)
    relabelled = labels.copy()
    relabelled[40] = 1  # not a tie swap: the official detection is simply missing
    with pytest.raises(AssertionError, match="official detection 40"):
        assert_same_top_detections((boxes, scores, relabelled), ref)
    dropped = tuple(np.delete(a, 40, 0) for a in ref)  # missing, nothing kept in its place
    with pytest.raises(AssertionError, match="official detection 40"):
        assert_same_top_detections(dropped, ref)
    many = moved.copy()
    many[41:60] += 5  # a swap, then far more missing than a tie explains
    with pytest.raises(AssertionError, match="too many"):
        assert_same_top_detections((many, scores, labels), ref)
