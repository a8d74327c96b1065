"""The one place that decides where bf16 autocast runs."""
from __future__ import annotations

from contextlib import nullcontext

import torch


def bf16_autocast(device: torch.device, cuda: bool = True, cpu: bool = False):
    """bf16 autocast on `device` when asked for its kind (`cuda` on CUDA, `cpu` on a CPU),
    a no-op context otherwise. The context can be entered again and again."""
    wanted = {"cuda": cuda, "cpu": cpu}.get(device.type, False)
    return torch.autocast(device.type, dtype=torch.bfloat16) if wanted else nullcontext()
