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


def assert_same_top_detections(ours, ref, k=100, box_tol=1e-2, score_tol=1e-5):
    """The top k agree: same scores in order; within each group of tied scores the
    (label, box) pairs match as sets; the tie group cut at k may differ."""
    (our_boxes, our_scores, our_labels), (ref_boxes, ref_scores, ref_labels) = ours, ref
    np.testing.assert_allclose(our_scores[:k], ref_scores[:k], atol=score_tol, rtol=0)
    cut = ref_scores[k - 1] if len(ref_scores) >= k else -1.0
    matched = 0
    for i in range(min(k, len(ref_scores))):
        if abs(ref_scores[i] - cut) <= score_tol:
            continue
        tied = np.flatnonzero(np.abs(our_scores - ref_scores[i]) <= score_tol)
        hits = [j for j in tied if our_labels[j] == ref_labels[i]
                and np.abs(our_boxes[j] - ref_boxes[i]).max() <= box_tol]
        assert hits, f"official detection {i} (label {ref_labels[i]}, box {ref_boxes[i]}) not found"
        matched += 1
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
