"""Peak memory held by tensors on a CPU: the counterpart of `torch.cuda.max_memory_allocated`.

A process's peak RSS also counts the runtime's own buffers and whatever the allocator keeps, so
two methods can differ there by more than their tensors do. This reads the profiler's record of
every allocation and free made through PyTorch's CPU allocator and returns the highest total
of live bytes, as CUDA's caching allocator counts them on a GPU.
"""
from __future__ import annotations

import torch


class TensorPeak:
    """`with TensorPeak() as peak: ...` then `peak.mb`: the most tensor memory live at once inside
    the block, over what was live when it began. Frees of tensors made before the block are not
    in the record (the profiler warns), so start it before the work to be measured is set up."""

    def __init__(self):
        self.mb = float("nan")
        self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                               profile_memory=True)

    def __enter__(self) -> "TensorPeak":
        self._profile.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._profile.__exit__(*exc)
        events = [e for e in self._profile.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
        live = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            live += event.nbytes()
            peak = max(peak, live)
        self.mb = peak / 2**20
