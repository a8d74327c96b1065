"""The CPU memory measure that benchmarks/train_speed.py reports as `peak_tensor_mb`."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tensor_memory import TensorPeak  # noqa: E402


def test_tensor_peak_counts_the_most_memory_live_at_once():
    with TensorPeak() as peak:
        first = torch.zeros(2**20)   # 4 MiB live
        second = torch.zeros(2**19)  # 6 MiB live: the peak
        del first
        third = torch.zeros(2**19)   # 4 MiB live again
        del second, third
    assert abs(peak.mb - 6.0) < 0.01


def test_tensor_peak_sees_autograd_buffers_and_temporaries():
    weight = torch.randn(256, 256, requires_grad=True)
    with TensorPeak() as peak:
        x = torch.randn(1024, 256)  # 1 MiB
        (x @ weight).relu().sum().backward()
    # the input (1 MiB), the product and its relu (1 MiB each) and weight.grad (0.25 MiB) live at once
    assert peak.mb >= 3.0
    assert peak.mb < 6.0
