"""Skip marker for tests that run torch.compile on the CPU: inductor needs a host C++ compiler."""
from __future__ import annotations

import pytest


def _has_cpp_compiler() -> bool:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
        return True
    except Exception:  # any failure of the probe means inductor cannot build CPU kernels here
        return False


needs_cpp_compiler = pytest.mark.skipif(
    not _has_cpp_compiler(),
    reason="torch.compile on the CPU needs a C++ compiler (inductor); install g++ (Debian: build-essential)")
