"""YOLO-World v2 in plain PyTorch: CSPDarknet backbone, RepVL-PAN neck with
max-sigmoid text attention, contrastive head with DFL box regression.

Sizes follow ../shared/specs/yolo_world_v2.md exactly. Module attribute names
mirror the official implementation (`backbone.image_model` -> `backbone`,
`neck` -> `neck`, `bbox_head.head_module` -> `head`) so official checkpoints
load by a prefix rename (see `official.py`).

The detector is text-agnostic: it takes text embeddings (B, N, D) and returns
per-level class logits for those N texts plus DFL box distances.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from cl_detect.models.layers import (
    SPPF, BatchNorm2d, ConvModule, CSPLayerWithTwoConv, MaxSigmoidCSPLayerWithTwoConv, make_divisible, make_round)
from cl_detect.models.registry import register_detector

STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture of a YOLO-World v2 detector.

    Args:
        deepen: block-count multiplier (S 0.33, M 0.67, L/X 1.0).
        widen: channel multiplier (S 0.5, M 0.75, L 1.0, X 1.25, XL 1.5).
        last_stage_channels: stage-4 width before widening (S 1024, M 768, L/X 512).
        text_dim: width of the text embeddings (512 CLIP B/32, 384 MiniLM, 768 CLIP L).
        use_bn_head: v2 BatchNorm contrastive head (True) or v1 L2-normalised head (False).
        num_classes: training vocabulary size; only sets the class-branch width
            max(in_channels[0], num_classes) as the official head does.
        reg_max: DFL bins per side.
        backbone: "csp_darknet" or "timm:<model_name>" (a timm features_only backbone).
        pretrained_backbone: load timm's pretrained weights (only when asked; downloads).
        neck_embed_channels, neck_num_heads: before widening; derived from
            last_stage_channels as in the official configs when left empty.
    """

    deepen: float = 0.33
    widen: float = 0.5
    last_stage_channels: int = 1024
    text_dim: int = 512
    use_bn_head: bool = True
    num_classes: int = 80
    reg_max: int = 16
    backbone: str = "csp_darknet"
    pretrained_backbone: bool = False
    neck_embed_channels: tuple[int, ...] = field(default=())
    neck_num_heads: tuple[int, ...] = field(default=())

    def __post_init__(self):
        if not self.neck_embed_channels:
            object.__setattr__(self, "neck_embed_channels", (128, 256, self.last_stage_channels // 2))
        if not self.neck_num_heads:
            object.__setattr__(self, "neck_num_heads", (4, 8, self.last_stage_channels // 2 // 32))
        if self.backbone != "csp_darknet" and not self.backbone.startswith("timm:"):
            raise ValueError(f"backbone must be 'csp_darknet' or 'timm:<model_name>', got {self.backbone!r}")

    @property
    def out_channels(self) -> tuple[int, int, int]:
        """Neck (and head input) channels per level."""
        return tuple(make_divisible(c, self.widen) for c in (256, 512, self.last_stage_channels))


class CSPDarknet(nn.Module):
    """YOLOv8 CSPDarknet (P5); returns the stage 2, 3, 4 outputs (strides 8, 16, 32)."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        widen, deepen = config.widen, config.deepen
        arch = [(64, 128, 3, False), (128, 256, 6, False), (256, 512, 6, False),
                (512, config.last_stage_channels, 3, True)]
        self.stem = ConvModule(3, make_divisible(64, widen), 3, 2)
        for index, (cin, cout, blocks, spp) in enumerate(arch, start=1):
            cin, cout = make_divisible(cin, widen), make_divisible(cout, widen)
            layers = [ConvModule(cin, cout, 3, 2),
                      CSPLayerWithTwoConv(cout, cout, make_round(blocks, deepen), add_identity=True)]
            if spp:
                layers.append(SPPF(cout))
            self.add_module(f"stage{index}", nn.Sequential(*layers))
        self.channels = tuple(make_divisible(c, widen) for c in (256, 512, config.last_stage_channels))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage2(self.stage1(self.stem(images)))
        c4 = self.stage3(x)
        return [x, c4, self.stage4(c4)]


class YOLOWorldPAFPN(nn.Module):
    """RepVL-PAN without image-pooling attention (v2): top-down then bottom-up
    MaxSigmoid C2f blocks, every block guided by the text embeddings."""

    def __init__(self, in_channels: tuple[int, ...], config: DetectorConfig):
        super().__init__()
        out = config.out_channels
        num_blocks = make_round(3, config.deepen)
        embed = [make_round(c, config.widen) for c in config.neck_embed_channels]
        heads = [make_round(h, config.widen) for h in config.neck_num_heads]

        def block(cin: int, level: int) -> MaxSigmoidCSPLayerWithTwoConv:
            return MaxSigmoidCSPLayerWithTwoConv(cin, out[level], num_blocks, config.text_dim,
                                                 embed[level], heads[level])

        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down_layers = nn.ModuleList([block(in_channels[2] + in_channels[1], 1),
                                              block(out[1] + in_channels[0], 0)])
        self.downsample_layers = nn.ModuleList([ConvModule(out[0], out[0], 3, 2),
                                                ConvModule(out[1], out[1], 3, 2)])
        self.bottom_up_layers = nn.ModuleList([block(out[0] + out[1], 1),
                                               block(out[1] + in_channels[2], 2)])

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        t4 = self.top_down_layers[0](torch.cat([self.upsample(c5), c4], 1), text)
        p3 = self.top_down_layers[1](torch.cat([self.upsample(t4), c3], 1), text)
        p4 = self.bottom_up_layers[0](torch.cat([self.downsample_layers[0](p3), t4], 1), text)
        p5 = self.bottom_up_layers[1](torch.cat([self.downsample_layers[1](p4), c5], 1), text)
        return [p3, p4, p5]


class BNContrastiveHead(nn.Module):
    """v2 region-text score: BatchNorm on the region embedding, L2-normalised text,
    scaled dot product plus a learned bias."""

    def __init__(self, embed_dims: int):
        super().__init__()
        self.norm = BatchNorm2d(embed_dims, eps=0.001, momentum=0.03)
        self.bias = nn.Parameter(torch.zeros([]))
        self.logit_scale = nn.Parameter(-1.0 * torch.ones([]))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        text = F.normalize(text, dim=-1, p=2)
        return torch.einsum("bchw,bkc->bkhw", x, text) * self.logit_scale.exp() + self.bias


class ContrastiveHead(nn.Module):
    """v1 region-text score: cosine similarity scaled by exp(logit_scale) plus a bias."""

    def __init__(self, embed_dims: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros([]))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1, p=2)
        text = F.normalize(text, dim=-1, p=2)
        return torch.einsum("bchw,bkc->bkhw", x, text) * self.logit_scale.exp() + self.bias


class YOLOWorldHead(nn.Module):
    """Decoupled head per level: class branch -> region embedding -> contrastive
    score against the texts; box branch -> 4 x reg_max DFL logits."""

    def __init__(self, in_channels: tuple[int, ...], config: DetectorConfig):
        super().__init__()
        self.reg_max = config.reg_max
        reg_out = max(16, in_channels[0] // 4, 4 * config.reg_max)
        cls_out = max(in_channels[0], config.num_classes)
        contrast = BNContrastiveHead if config.use_bn_head else ContrastiveHead
        self.cls_preds = nn.ModuleList(
            nn.Sequential(ConvModule(c, cls_out, 3), ConvModule(cls_out, cls_out, 3),
                          nn.Conv2d(cls_out, config.text_dim, 1)) for c in in_channels)
        self.reg_preds = nn.ModuleList(
            nn.Sequential(ConvModule(c, reg_out, 3), ConvModule(reg_out, reg_out, 3),
                          nn.Conv2d(reg_out, 4 * config.reg_max, 1)) for c in in_channels)
        self.cls_contrasts = nn.ModuleList(contrast(config.text_dim) for _ in in_channels)
        self.register_buffer("proj", torch.arange(config.reg_max, dtype=torch.float), persistent=False)

    def reset_parameters(self, num_classes: int = 80) -> None:
        """Initialisation for training from scratch (biases give a 5-objects prior)."""
        for cls_pred, reg_pred, contrast, stride in zip(self.cls_preds, self.reg_preds,
                                                        self.cls_contrasts, STRIDES):
            nn.init.zeros_(cls_pred[-1].bias)
            nn.init.constant_(reg_pred[-1].bias, 1.0)
            nn.init.constant_(contrast.bias, math.log(5 / num_classes / (640 / stride) ** 2))

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor):
        cls_logits, bbox_preds, bbox_dists = [], [], []
        for x, cls_pred, reg_pred, contrast in zip(feats, self.cls_preds, self.reg_preds, self.cls_contrasts):
            cls_logits.append(contrast(cls_pred(x), text))
            dist = reg_pred(x)
            bbox_dists.append(dist)
            bbox_preds.append(self._expected_distances(dist))
        return cls_logits, bbox_preds, bbox_dists

    def _expected_distances(self, dist: torch.Tensor) -> torch.Tensor:
        """DFL expectation in float32, also under bf16 autocast: rounding its result to bf16
        alone moved box sides by up to 1/16 of a stride (float32 inputs compute as before)."""
        batch, _, height, width = dist.shape
        prob = dist.float().reshape(batch, 4, self.reg_max, height, width).softmax(2)
        if not torch.is_autocast_enabled(prob.device.type):
            return torch.einsum("bsrhw,r->bshw", prob, self.proj.float())
        with torch.autocast(prob.device.type, enabled=False):
            return torch.einsum("bsrhw,r->bshw", prob, self.proj.float())


@dataclass
class DetectorOutput:
    """Per-level outputs (strides 8, 16, 32).

    Args:
        cls_logits: (B, N, H, W) logits per text.
        bbox_preds: (B, 4, H, W) distances l, t, r, b in stride units.
        bbox_dists: (B, 4 * reg_max, H, W) raw DFL logits (channel = side * reg_max + bin).
        neck_feats: (B, C, H, W) neck outputs (for feature distillation).
    """

    cls_logits: list[torch.Tensor]
    bbox_preds: list[torch.Tensor]
    bbox_dists: list[torch.Tensor]
    neck_feats: list[torch.Tensor]


class YOLOWorldDetector(nn.Module):
    """Image backbone + text-guided neck + contrastive head.

    Call as `detector(images, text_embeddings)` with images (B, 3, H, W) RGB in
    [0, 1] (letterboxed) and text embeddings (B, N, D) or (1, N, D) (broadcast).
    """

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        if config.backbone == "csp_darknet":
            self.backbone = CSPDarknet(config)
        else:
            from cl_detect.models.timm_backbone import TimmBackbone
            self.backbone = TimmBackbone(config.backbone.split(":", 1)[1], config.pretrained_backbone)
        self.neck = YOLOWorldPAFPN(self.backbone.channels, config)
        self.head = YOLOWorldHead(config.out_channels, config)
        self.head.reset_parameters(config.num_classes)
        self.strides = STRIDES

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> DetectorOutput:
        if text_embeddings.dim() != 3 or text_embeddings.shape[-1] != self.config.text_dim:
            raise ValueError(f"text embeddings must be (B, N, {self.config.text_dim}), "
                             f"got {tuple(text_embeddings.shape)}")
        if text_embeddings.shape[1] == 0:
            raise ValueError("no prompts: text embeddings are (B, 0, D); give at least one text")
        if text_embeddings.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"text embeddings are {tuple(text_embeddings.shape)} for {images.shape[0]} images: "
                             f"give (1, N, D) prompts for all images or (B, N, D) with B = {images.shape[0]}")
        height, width = images.shape[-2:]
        if height % STRIDES[-1] or width % STRIDES[-1]:
            raise ValueError(f"images are {height}x{width} (HxW); both sides must be multiples of {STRIDES[-1]}, "
                             f"the largest stride: letterbox them (cl_detect.data.preprocess.letterbox) or pad")
        if text_embeddings.shape[0] == 1 and images.shape[0] > 1:
            text_embeddings = text_embeddings.expand(images.shape[0], -1, -1)
        neck_feats = self.neck(self.backbone(images), text_embeddings)
        cls_logits, bbox_preds, bbox_dists = self.head(neck_feats, text_embeddings)
        return DetectorOutput(cls_logits, bbox_preds, bbox_dists, neck_feats)

    @torch.no_grad()
    def predict(self, images, text_embeddings: torch.Tensor, **kwargs):
        """Detect in raw images (paths or BGR arrays); see `cl_detect.models.predict.predict`."""
        from cl_detect.models.predict import predict
        return predict(self, images, text_embeddings, **kwargs)


def _build(defaults: dict, overrides: dict) -> YOLOWorldDetector:
    return YOLOWorldDetector(DetectorConfig(**{**defaults, **overrides}))


@register_detector
def yolo_world_v2_t(**kwargs) -> YOLOWorldDetector:
    """Tiny CPU size (width 0.125) for tests and the demo; not an official size."""
    return _build(dict(deepen=0.33, widen=0.125, last_stage_channels=1024), kwargs)


@register_detector
def yolo_world_v2_n(**kwargs) -> YOLOWorldDetector:
    """Nano CPU size (width 0.25); not an official size."""
    return _build(dict(deepen=0.33, widen=0.25, last_stage_channels=1024), kwargs)


@register_detector
def yolo_world_v2_s(**kwargs) -> YOLOWorldDetector:
    return _build(dict(deepen=0.33, widen=0.5, last_stage_channels=1024), kwargs)


@register_detector
def yolo_world_v2_m(**kwargs) -> YOLOWorldDetector:
    return _build(dict(deepen=0.67, widen=0.75, last_stage_channels=768), kwargs)


@register_detector
def yolo_world_v2_l(**kwargs) -> YOLOWorldDetector:
    return _build(dict(deepen=1.0, widen=1.0, last_stage_channels=512), kwargs)


@register_detector
def yolo_world_v2_x(**kwargs) -> YOLOWorldDetector:
    return _build(dict(deepen=1.0, widen=1.25, last_stage_channels=512), kwargs)


@register_detector
def yolo_world_v2_xl(**kwargs) -> YOLOWorldDetector:
    return _build(dict(deepen=1.0, widen=1.5, last_stage_channels=512), kwargs)


def config_with(config: DetectorConfig, **changes) -> DetectorConfig:
    """A copy of `config` with some fields changed (validated again)."""
    return replace(config, **changes)
