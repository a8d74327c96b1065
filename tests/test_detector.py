"""Detector registry, shapes, sizes, head variants and timm backbones (no fixtures needed)."""
import pytest
import torch

from cl_detect import create_detector, list_detectors, save_official_checkpoint
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


def test_wrong_text_width_no_prompts_and_odd_image_sides_are_clear_errors():
    detector = create_detector("yolo_world_v2_t", text_dim=384)
    with pytest.raises(ValueError, match=r"\(B, N, 384\)"):
        detector(torch.rand(1, 3, 64, 64), torch.randn(1, 3, 512))
    detector = create_detector("yolo_world_v2_t")
    with pytest.raises(ValueError, match="no prompts"):
        detector(torch.zeros(1, 3, 64, 64), torch.zeros(1, 0, 512))
    with pytest.raises(ValueError, match=r"text embeddings are \(3, 2, 512\) for 2 images.*B = 2"):
        detector(torch.zeros(2, 3, 64, 64), torch.zeros(3, 2, 512))  # failed in einsum
    with pytest.raises(ValueError, match=r"images are 64x500 \(HxW\); both sides must be multiples of 32"):
        detector(torch.zeros(1, 3, 64, 500), torch.zeros(1, 2, 512))
    assert detector(torch.zeros(1, 3, 64, 96), torch.zeros(1, 2, 512)).cls_logits[0].shape == (1, 2, 8, 12)


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
    with pytest.raises(ValueError, match="official layout holds YOLO-World's CSPDarknet.*save_model"):
        save_official_checkpoint(detector, "unused.pth")


@pytest.mark.parametrize("name, message", [
    ("no_such_net", r"unknown timm model 'no_such_net'; see timm.list_models\('no\*'\)"),
    # channels-last (NHWC) maps used to reach the neck and fail there on a concat of wrong sizes
    ("mambaout_femto", r"'mambaout_femto' gives feature maps of shape \[\(12, 16, 96\).*channels-first"),
    # a fixed input size: even at its own 224 it failed deep in the neck (its maps are NHWC too)
    ("swin_tiny_patch4_window7_224", r"cannot run on a 96x128 image \(AssertionError.*convolutional model"),
])
def test_unusable_timm_backbones_are_refused_when_built(name, message):
    with pytest.raises(ValueError, match=message):
        create_detector("yolo_world_v2_t", text_dim=32, backbone=f"timm:{name}")


def test_box_distances_stay_float32_under_bf16_autocast():
    """The DFL expectation runs in float32 under autocast: in bf16 it rounded each box side
    to 1/16 of a stride near 8-16 bins (up to 2 px at stride 32)."""
    torch.manual_seed(0)
    detector = create_detector("yolo_world_v2_t", text_dim=16).eval()
    images, text = torch.rand(1, 3, 64, 96), torch.randn(1, 3, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = detector(images, text)
    for dists, distances in zip(out.bbox_dists, out.bbox_preds):
        assert dists.dtype == torch.bfloat16 and distances.dtype == torch.float32
        batch, _, height, width = dists.shape
        prob = dists.float().reshape(batch, 4, 16, height, width).softmax(2)
        assert torch.allclose(distances, (prob * torch.arange(16.0)[:, None, None]).sum(2), atol=1e-5)


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


def _saved_bytes(run, module: torch.nn.Module | None = None) -> int:
    """Bytes of the distinct storages autograd saves for backward while `run()` executes,
    leaving out `module`'s weights and buffers (they are held anyway)."""
    saved = {}
    held = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())} if module else set()

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in held:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return out, sum(saved.values())


def test_frozen_eval_batchnorm_saves_no_activation_and_gives_the_same_gradient():
    from cl_detect.models.layers import BatchNorm2d
    torch.manual_seed(0)
    ours, plain = BatchNorm2d(6, eps=1e-3), torch.nn.BatchNorm2d(6, eps=1e-3)
    for bn in (ours, plain):  # same non-trivial statistics and affine parameters, frozen, eval mode
        bn.running_mean.copy_(torch.linspace(-1, 1, 6))
        bn.running_var.copy_(torch.linspace(0.5, 2, 6))
        bn.weight.data.copy_(torch.linspace(0.3, 1.2, 6))
        bn.bias.data.copy_(torch.linspace(-0.2, 0.4, 6))
        bn.eval().requires_grad_(False)
    x = torch.randn(2, 6, 16, 16, dtype=torch.float64).to(torch.float32).requires_grad_(True)
    grad_out = torch.randn(2, 6, 16, 16)
    y_ours, saved_ours = _saved_bytes(lambda: ours(x * 1))
    y_plain, saved_plain = _saved_bytes(lambda: plain(x * 1))
    assert torch.equal(y_ours, y_plain)  # the same F.batch_norm call computes the output
    assert saved_ours < x.numel() * 4 <= saved_plain  # only per-channel values are kept
    (g_ours,) = torch.autograd.grad(y_ours, x, grad_out)
    (g_plain,) = torch.autograd.grad(y_plain, x, grad_out)
    torch.testing.assert_close(g_ours, g_plain, rtol=1e-6, atol=1e-7)
    # training mode or trainable affine parameters: plain batch norm (statistics and parameter gradients)
    ours.train()
    assert ours(x).grad_fn.name() == "NativeBatchNormBackward0"
    ours.eval().weight.requires_grad_(True)
    assert ours(x).grad_fn.name() == "NativeBatchNormBackward0"


def test_frozen_detector_passes_the_same_input_gradient_with_less_saved_memory():
    torch.manual_seed(0)
    detector = create_detector("yolo_world_v2_t", text_dim=16)
    detector.train()(torch.rand(4, 3, 64, 64), torch.randn(4, 3, 16))  # non-trivial running statistics
    detector.eval().requires_grad_(False)
    images, text = torch.rand(2, 3, 128, 128, requires_grad=True), torch.randn(2, 3, 16)

    def input_grad():
        out = detector(images, text)
        loss = sum((x.sigmoid() * torch.linspace(0, 1, x.shape[1]).view(1, -1, 1, 1)).sum() for x in out.cls_logits)
        return torch.autograd.grad(loss, images)[0], loss

    (grad, loss), saved = _saved_bytes(input_grad, detector)
    plain = {name: m for name, m in detector.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert plain and all(type(m).__name__ == "BatchNorm2d" and type(m) is not torch.nn.BatchNorm2d
                         for m in plain.values())
    for m in plain.values():  # the same model through aten's batch norm
        m.__class__ = torch.nn.BatchNorm2d
    (grad_plain, loss_plain), saved_plain = _saved_bytes(input_grad, detector)
    assert torch.equal(loss, loss_plain)
    torch.testing.assert_close(grad, grad_plain, rtol=1e-4, atol=1e-6)
    assert saved < 0.8 * saved_plain, (saved, saved_plain)
