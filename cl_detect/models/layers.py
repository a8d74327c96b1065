"""Building blocks of YOLO-World v2 (YOLOv8 CSP blocks and the max-sigmoid text attention).

Attribute names follow the official mmyolo modules (`conv`/`bn`, `main_conv`,
`final_conv`, `blocks`, `attn_block`, ...) so that official state dicts map onto
these modules by a prefix rename only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.03
BN_EPS = 0.001


class _FrozenBatchNormFunction(torch.autograd.Function):
    """Eval-mode batch norm with frozen affine parameters that keeps only the per-channel scale
    for backward: the gradient of y = x * scale + shift is grad * scale, so the input (a full
    activation) need not be saved, as aten's batch norm does."""

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps):
        ctx.save_for_backward(weight * torch.rsqrt(var + eps))
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return (grad * scale.view(1, -1, *[1] * (grad.dim() - 2))).to(grad.dtype), None, None, None, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose frozen eval-mode form saves no activation for backward.

    Methods that freeze a part of the detector but train something before it (LoRA
    adapters, prompts feeding the neck) run that part's BatchNorm in eval mode with
    frozen parameters; gradients still flow through it to the input. There the output
    is computed by the same `F.batch_norm` call (identical values) and backward keeps a
    per-channel scale instead of the input. Any other case (training mode, trainable
    affine, no gradient needed) is plain nn.BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or not self.track_running_stats or not (torch.is_grad_enabled() and x.requires_grad)
                or self.weight is None or self.weight.requires_grad or self.bias.requires_grad):
            return super().forward(x)
        return _FrozenBatchNormFunction.apply(x, self.running_mean, self.running_var, self.weight, self.bias,
                                              self.eps)


def make_divisible(channels: float, widen: float, divisor: int = 8) -> int:
    """Scale a channel count by `widen` and round up to a multiple of `divisor`."""
    return int(math.ceil(channels * widen / divisor) * divisor)


def make_round(count: float, factor: float) -> int:
    """Scale a block count (or embed width) by `factor`; counts of 1 stay 1."""
    return max(round(count * factor), 1) if count > 1 else count


class ConvModule(nn.Module):
    """Conv (no bias) -> BatchNorm -> SiLU (or no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DarknetBottleneck(nn.Module):
    """Two 3x3 ConvModules with an optional residual (expansion 1)."""

    def __init__(self, channels: int, add_identity: bool):
        super().__init__()
        self.conv1 = ConvModule(channels, channels, 3)
        self.conv2 = ConvModule(channels, channels, 3)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayerWithTwoConv(nn.Module):
    """YOLOv8 C2f: split in two, chain `num_blocks` bottlenecks on the last chunk, concat all."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, add_identity: bool):
        super().__init__()
        self.mid_channels = int(out_channels * 0.5)
        self.main_conv = ConvModule(in_channels, 2 * self.mid_channels, 1)
        self.final_conv = ConvModule((2 + num_blocks) * self.mid_channels, out_channels, 1)
        self.blocks = nn.ModuleList(DarknetBottleneck(self.mid_channels, add_identity) for _ in range(num_blocks))

    def _chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        chunks = list(self.main_conv(x).split((self.mid_channels, self.mid_channels), 1))
        for block in self.blocks:
            chunks.append(block(chunks[-1]))
        return chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(torch.cat(self._chunks(x), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools."""

    def __init__(self, channels: int, kernel_size: int = 5):
        super().__init__()
        self.conv1 = ConvModule(channels, channels // 2, 1)
        self.poolings = nn.MaxPool2d(kernel_size, 1, kernel_size // 2)
        self.conv2 = ConvModule(channels // 2 * 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        p1 = self.poolings(x)
        p2 = self.poolings(p1)
        p3 = self.poolings(p2)
        return self.conv2(torch.cat([x, p1, p2, p3], 1))


class MaxSigmoidAttnBlock(nn.Module):
    """Text-guided attention: each head's image embedding is matched against every
    text embedding, the best match (max over texts) gates the projected features."""

    def __init__(self, in_channels: int, out_channels: int, guide_channels: int, embed_channels: int,
                 num_heads: int):
        super().__init__()
        if embed_channels % num_heads:
            raise ValueError(f"embed_channels {embed_channels} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_channels = embed_channels // num_heads
        self.embed_conv = (ConvModule(in_channels, embed_channels, 1, act=False)
                           if embed_channels != in_channels else None)
        self.guide_fc = nn.Linear(guide_channels, embed_channels)
        self.bias = nn.Parameter(torch.zeros(num_heads))
        self.project_conv = ConvModule(in_channels, out_channels, 3, act=False)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        guide = self.guide_fc(text).reshape(batch, -1, self.num_heads, self.head_channels)
        embed = self.embed_conv(x) if self.embed_conv is not None else x
        embed = embed.reshape(batch, self.num_heads, self.head_channels, height, width)
        # (B, heads, hc, HW) x (B, heads, hc, N) -> (B, heads, HW, N), max over texts
        scores = torch.matmul(embed.flatten(3).transpose(2, 3), guide.permute(0, 2, 3, 1))
        attn = scores.amax(dim=-1).reshape(batch, self.num_heads, height, width)
        attn = (attn / self.head_channels ** 0.5 + self.bias[None, :, None, None]).sigmoid()
        out = self.project_conv(x).reshape(batch, self.num_heads, -1, height, width)
        return (out * attn.unsqueeze(2)).reshape(batch, -1, height, width)


class MaxSigmoidCSPLayerWithTwoConv(CSPLayerWithTwoConv):
    """C2f whose chunk list also gets the text-attention output of the last chunk."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, guide_channels: int,
                 embed_channels: int, num_heads: int):
        super().__init__(in_channels, out_channels, num_blocks, add_identity=False)
        self.final_conv = ConvModule((3 + num_blocks) * self.mid_channels, out_channels, 1)
        self.attn_block = MaxSigmoidAttnBlock(self.mid_channels, self.mid_channels, guide_channels,
                                              embed_channels, num_heads)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        chunks = self._chunks(x)
        chunks.append(self.attn_block(chunks[-1], text))
        return self.final_conv(torch.cat(chunks, 1))
