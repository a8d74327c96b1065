"""Inference-time fusion: fold each ConvModule's BatchNorm into its convolution.

BatchNorm in eval mode is an affine map per channel, so conv -> BN equals one
conv with scaled weights and a bias. The fused detector computes the same
function up to float rounding (tested to 1e-4 on the official fixtures) and
skips a full pass over every feature map per layer. Use it for inference only:
the fused model has no BatchNorm statistics left to train.

`compile_for_inference` goes one step further for long inference jobs: it runs
the fused detector through torch.compile.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import torch
from torch import nn

from cl_detect.models.layers import ConvModule


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias equal to bn(conv(x)) for BN in eval mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fuse_detector(detector: nn.Module) -> nn.Module:
    """Fold BatchNorm into the convolution of every ConvModule, in place; returns the detector in eval mode."""
    detector.eval()
    for module in detector.modules():
        # exact types only: adapters (e.g. peft LoRA convs) wrap the conv and are left alone
        if isinstance(module, ConvModule) and type(module.conv) is nn.Conv2d and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
    return detector


def fused_copy(detector: nn.Module) -> nn.Module:
    """A fused inference copy; the original (which may keep training) is untouched."""
    return fuse_detector(copy.deepcopy(detector))


def compile_for_inference(detector: nn.Module, batch_size: int) -> Callable:
    """`detector(images, text)` compiled by torch.compile for inference.

    It uses inductor's `freezing` option (inference-only graph passes). The weights stay
    inputs of the compiled code: another detector of the same architecture, or the same
    one after more training, runs the code already compiled with its own weights, so a
    process compiles once per input shape (tested in tests/test_predict.py). Shapes are
    static: every image size and prompt count compiles once (tens of seconds on a small
    CPU; dynamo's recompile limit, 8 shapes per process, then falls back to eager with a
    warning), and a batch smaller than
    `batch_size` is padded with blank images (and zero prompts when the prompts are per
    image), so the last batch of a dataset does not compile again; the padded rows are cut
    from the outputs. Each image is computed on its own, so they do not change the real
    images' outputs. Call it under `torch.no_grad()` with the detector in eval mode
    (`fused_copy` gives both a fused and an eval-mode detector).
    """
    if next(detector.parameters()).device.type == "cpu":
        check_cpp_compiler()
    compiled = torch.compile(detector, options={"freezing": True}, dynamic=False)

    def run(images: torch.Tensor, text: torch.Tensor):
        missing = batch_size - len(images)
        if missing > 0:
            images = torch.cat([images, images.new_zeros(missing, *images.shape[1:])])
            if len(text) > 1:  # per-image prompts (B, N, D); (1, N, D) is broadcast
                text = torch.cat([text, text.new_zeros(missing, *text.shape[1:])])
        out = compiled(images, text)
        if missing > 0:  # every output field is a list of per-level (B, ...) tensors
            out = type(out)(**{f.name: [level[:batch_size - missing] for level in getattr(out, f.name)]
                               for f in dataclasses.fields(out)})
        return out

    return run


def check_cpp_compiler() -> None:
    """Inductor builds CPU kernels with a host C++ compiler; without one the first batch failed deep in
    torch._dynamo (InductorError, a traceback from `cl-detect`), after the data and model had loaded."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as err:
        raise ValueError(f"compiling for the CPU needs a C++ compiler, and torch finds none ({err}); install g++ "
                         "(Debian/Ubuntu: apt-get install build-essential) or set CXX, or run without compile "
                         "(drop --compile / eval.compile)") from None
