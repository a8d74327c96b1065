"""Re-parameterised head and neck modules: class embeddings folded into 1x1 convolutions.

Written from ../shared/specs/yolo_world_v2.md section 8. With E the L2-normalised
class embeddings (N, D):

- head, per level: `norm` (the contrastive head's BatchNorm) then a 1x1 conv with
  weight E * exp(logit_scale) -> (N, D, 1, 1) and bias = the head bias;
- neck, per max-sigmoid block: the text projection `guide_fc` folded into one
  1x1 conv per attention head, weight (E @ W^T + b) split per head -> (N, hc, 1, 1).

Attribute names follow the official reparameterised layout (`norm`, `conv`,
`guide_convs`, `embed_conv`, `bias`, `project_conv`). The original scalars and
the projection are kept as `fold_*` buffers, so classes of a later task can be
folded in the same way (new rows); they are left out of the official export.

The detector still receives text embeddings (B, M, D): a folded module only uses
them to know *which* of its N classes each prompt is (`ClassIndex`), so per-image
prompt lists, their order and '' padding work as in the unfolded model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PADDING_LOGIT = -1e4  # padding prompts are never a class: sigmoid 0, no loss


class ClassIndex(nn.Module):
    """Maps each text embedding to the row of its class (or -1 for a padding prompt).

    Args:
        dim: embedding width.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("class_embeddings", torch.zeros(0, dim))
        self.register_buffer("padding_embeddings", torch.zeros(0, dim))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """(B, M, D) text -> (B, M) long class rows, -1 for padding; unknown texts raise."""
        table = torch.cat([self.class_embeddings, self.padding_embeddings]).float()
        text = text.float()
        # squared distance via dot products: (B, M, N) memory, not (B, M, N, D)
        distance = (text.pow(2).sum(-1, keepdim=True) + table.pow(2).sum(-1) - 2 * text @ table.T).clamp(min=0)
        best, row = distance.min(-1)
        if (best > 1e-6).any():
            raise ValueError(f"a re-parameterised detector only knows the {len(self.class_embeddings)} classes it "
                             f"was folded with; got prompts that are not among them (evaluate with that "
                             f"vocabulary, or use a non-reparam method for open-vocabulary evaluation)")
        return torch.where(row < len(self.class_embeddings), row, torch.full_like(row, -1))


def _select(per_class: torch.Tensor, rows: torch.Tensor, fill: float) -> torch.Tensor:
    """(B, ..., N, H, W) scores, (B, M) rows -> (B, ..., M, H, W); padding rows get `fill`."""
    batch, height, width = per_class.shape[0], per_class.shape[-2], per_class.shape[-1]
    lead = per_class.shape[1:-3]
    index = rows.clamp(min=0).reshape(batch, *([1] * len(lead)), -1, 1, 1)
    index = index.expand(batch, *lead, -1, height, width)
    picked = per_class.gather(-3, index)
    pad = (rows < 0).reshape(batch, *([1] * len(lead)), -1, 1, 1)
    return picked.masked_fill(pad, fill)


def _grow_conv(conv: nn.Conv2d | None, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A 1x1 conv with `conv`'s rows (if any) followed by the new rows (N, C) [+ bias (N,)]."""
    old_rows = 0 if conv is None else conv.out_channels
    grown = nn.Conv2d(weight.shape[1], old_rows + len(weight), 1, bias=bias is not None).to(weight)
    with torch.no_grad():
        grown.weight[old_rows:] = weight[:, :, None, None]
        if bias is not None:
            grown.bias[old_rows:] = bias
        if conv is not None:
            grown.weight[:old_rows] = conv.weight
            if bias is not None:
                grown.bias[:old_rows] = conv.bias
    trains = conv is None or conv.weight.requires_grad
    grown.requires_grad_(trains)
    return grown


class FoldedContrastiveHead(nn.Module):
    """BatchNorm + 1x1 class conv; replaces a `BNContrastiveHead`.

    Args:
        head: the unfolded v2 contrastive head (its BatchNorm is reused).
        class_index: shared text -> class-row mapper.
    """

    def __init__(self, head: nn.Module, class_index: ClassIndex):
        super().__init__()
        if not isinstance(getattr(head, "norm", None), nn.BatchNorm2d):
            raise ValueError("reparam folds the v2 BatchNorm contrastive head only (use_bn_head=True); the v1 head "
                             "L2-normalises image features, which a convolution cannot express")
        self.norm = head.norm
        self.conv: nn.Conv2d | None = None  # built by the first `add_classes`
        self.register_buffer("fold_scale", head.logit_scale.detach().exp().clone())
        self.register_buffer("fold_bias", head.bias.detach().clone())
        object.__setattr__(self, "class_index", class_index)  # shared, owned by the method

    def add_classes(self, embeddings: torch.Tensor) -> None:
        """Fold more classes: rows E * exp(logit_scale), bias = the head bias."""
        embeddings = embeddings.to(self.fold_scale)  # the encoder gives float32; the head may be float64
        self.conv = _grow_conv(self.conv, embeddings * self.fold_scale,
                               self.fold_bias.expand(len(embeddings)).clone())

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return _select(self.conv(self.norm(x)), self.class_index(text), PADDING_LOGIT)


class FoldedMaxSigmoidAttnBlock(nn.Module):
    """Max-sigmoid attention whose text projection is folded into per-head class convs.

    Args:
        block: the unfolded `MaxSigmoidAttnBlock` (its convs and bias are reused).
        class_index: shared text -> class-row mapper.
    """

    def __init__(self, block: nn.Module, class_index: ClassIndex):
        super().__init__()
        self.num_heads, self.head_channels = block.num_heads, block.head_channels
        self.embed_conv = block.embed_conv
        self.bias = block.bias
        self.project_conv = block.project_conv
        self.guide_convs = nn.ModuleList()  # one per attention head, built by the first `add_classes`
        self.register_buffer("fold_guide_weight", block.guide_fc.weight.detach().clone())
        self.register_buffer("fold_guide_bias", block.guide_fc.bias.detach().clone())
        object.__setattr__(self, "class_index", class_index)

    def add_classes(self, embeddings: torch.Tensor) -> None:
        """Fold more classes: guide rows E @ W^T + b, split per attention head."""
        guide = F.linear(embeddings.to(self.fold_guide_weight), self.fold_guide_weight, self.fold_guide_bias)
        rows = guide.split(self.head_channels, dim=1)
        convs = list(self.guide_convs) or [None] * self.num_heads
        self.guide_convs = nn.ModuleList(_grow_conv(conv, part, None) for conv, part in zip(convs, rows))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        embed = self.embed_conv(x) if self.embed_conv is not None else x
        scores = torch.stack([conv(part) for conv, part in zip(self.guide_convs, embed.split(self.head_channels, 1))],
                             1)  # (B, heads, N, H, W)
        # the best-matching prompt of the image; padding prompts never win
        attn = _select(scores, self.class_index(text), PADDING_LOGIT).amax(2)
        attn = (attn / self.head_channels ** 0.5 + self.bias[None, :, None, None]).sigmoid()
        out = self.project_conv(x).reshape(batch, self.num_heads, -1, height, width)
        return (out * attn.unsqueeze(2)).reshape(batch, -1, height, width)
