"""Detector registry, shapes, sizes, head variants and timm backbones (no fixtures needed)."""
import pytest
import torch

from cl_detect import create_detector, list_detectors
from cl_detect.models.official import check_head_variant, official_state_dict

OFFICIAL_PARAMS_M = {"yolo_world_v2_s": 12.76, "yolo_world_v2_m": 28.38, "yolo_world_v2_l": 46.83,
                     "yolo_world_v2_x": 72.89}


def test_registry_lists_all_sizes():
    names = list_detectors()
    for size in "tnsmlx":
        assert f"yolo_world_v2_{size}" in names
    assert "yolo_world_v2_xl" in names
    with pytest.raises(ValueError, match="unknown detector 'yolo_world_v9'.*yolo_world_v2_s"):
        create_detector("yolo_world_v9")


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS_M))
def test_official_sizes_have_spec_parameter_counts(name):
    detector = create_detector(name)
    count = sum(p.numel() for p in detector.parameters()) / 1e6
    assert round(count, 2) == OFFICIAL_PARAMS_M[name]


@pytest.mark.parametrize("text_dim", [384, 512, 768])
def test_output_shapes_and_text_broadcast(text_dim):
    detector = create_detector("yolo_world_v2_t", text_dim=text_dim).eval()
    images = torch.rand(2, 3, 64, 96)
    text = torch.nn.functional.normalize(torch.randn(1, 5, text_dim), dim=-1)
    with torch.no_grad():
        out = detector(images, text)
        per_image = detector(images, text.expand(2, -1, -1))
    for level, stride in enumerate((8, 16, 32)):
        assert out.cls_logits[level].shape == (2, 5, 64 // stride, 96 // stride)
        assert out.bbox_preds[level].shape == (2, 4, 64 // stride, 96 // stride)
        assert out.bbox_dists[level].shape == (2, 64, 64 // stride, 96 // stride)
        assert torch.equal(out.cls_logits[level], per_image.cls_logits[level])
        # DFL expectation lies in [0, reg_max - 1]
        assert out.bbox_preds[level].min() >= 0 and out.bbox_preds[level].max() <= 15


def test_wrong_text_width_is_a_clear_error():
    detector = create_detector("yolo_world_v2_t", text_dim=384)
    with pytest.raises(ValueError, match=r"\(B, N, 384\)"):
        detector(torch.rand(1, 3, 64, 64), torch.randn(1, 3, 512))


def test_logits_depend_on_the_texts():
    detector = create_detector("yolo_world_v2_t", text_dim=64).eval()
    images = torch.rand(1, 3, 64, 64)
    text = torch.randn(1, 3, 64)
    with torch.no_grad():
        a = detector(images, text).cls_logits[0]
        b = detector(images, text.flip(1)).cls_logits[0]
    # swapping the texts swaps the class channels (up to the max-attention, which is order invariant)
    torch.testing.assert_close(a.flip(1), b)


def test_head_variants_and_wrong_variant_message():
    v2 = create_detector("yolo_world_v2_t")
    v1 = create_detector("yolo_world_v2_t", use_bn_head=False)
    assert any(k.startswith("head.cls_contrasts.0.norm") for k in v2.state_dict())
    assert not any(k.startswith("head.cls_contrasts.0.norm") for k in v1.state_dict())
    with pytest.raises(ValueError, match="use_bn_head=True"):
        check_head_variant(v1, official_state_dict(v2))
    with pytest.raises(ValueError, match="use_bn_head=False"):
        check_head_variant(v2, official_state_dict(v1))


def test_timm_backbone_feeds_the_same_neck_and_head():
    detector = create_detector("yolo_world_v2_t", text_dim=32, backbone="timm:resnet18").eval()
    assert detector.backbone.channels == (128, 256, 512)
    with torch.no_grad():
        out = detector(torch.rand(1, 3, 64, 64), torch.randn(1, 2, 32))
    assert [tuple(x.shape[-2:]) for x in out.cls_logits] == [(8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match="backbone must be"):
        create_detector("yolo_world_v2_t", backbone="resnet18")


def test_training_step_gives_gradients_everywhere():
    detector = create_detector("yolo_world_v2_t", text_dim=16).train()
    out = detector(torch.rand(2, 3, 64, 64), torch.randn(2, 3, 16))
    loss = sum(x.sum() for x in out.cls_logits) + sum(x.sum() for x in out.bbox_dists)
    loss.backward()
    without_grad = [n for n, p in detector.named_parameters() if p.grad is None]
    assert without_grad == []


def test_fused_detector_matches_unfused():
    from cl_detect.models.fuse import fused_copy
    detector = create_detector("yolo_world_v2_t", text_dim=16).train()
    detector(torch.rand(4, 3, 64, 64), torch.randn(4, 3, 16))  # non-trivial BN running statistics
    detector.eval()
    fused = fused_copy(detector)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.backbone.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.backbone.modules())  # original untouched
    images, text = torch.rand(2, 3, 64, 96), torch.randn(1, 3, 16)
    with torch.no_grad():
        a, b = detector(images, text), fused(images, text)
    for x, y in zip(a.cls_logits + a.bbox_preds, b.cls_logits + b.bbox_preds):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
