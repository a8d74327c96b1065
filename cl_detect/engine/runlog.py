"""Training logs: one JSON object per line (JSONL) plus TensorBoard scalars."""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class RunLogger:
    """Append-only JSONL log and a TensorBoard writer in `out_dir` (rank 0 only).

    Args:
        out_dir: folder for `log.jsonl` and the TensorBoard event files.
        enabled: False on non-zero ranks: every call is then a no-op.
        tensorboard: also write TensorBoard scalars.
    """

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.out_dir / "log.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def log(self, row: dict, step: int | None = None, prefix: str = "train") -> None:
        """Write one row; numeric entries also go to TensorBoard as `prefix/key`."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(row, default=float) + "\n")
        self.jsonl.flush()
        if self.writer is not None and step is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
