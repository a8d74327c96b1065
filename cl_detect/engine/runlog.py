"""Training logs: one JSON object per line (JSONL) plus TensorBoard scalars.

A run continued from its checkpoint logs again the steps it did after that checkpoint,
before it was stopped. The logger drops those rows when it writes its first row
(`start`), in the JSONL file and in TensorBoard (`purge_step`), so every step is logged
once and in order.
"""
from __future__ import annotations

import json
import os
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
        self.enabled, self.tensorboard = enabled, tensorboard
        self.writer = self.jsonl = None
        if not enabled:
            return
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "log.jsonl").touch()

    def start(self, after_step: int | None) -> None:
        """Open the logs for a session that continues after `after_step` (0: from the start).

        Rows of steps beyond it (written by an earlier session after the checkpoint this
        one resumed from, or by a run this one starts over) are dropped; None keeps every row.
        Called by the first `log` with its step minus one when not called before.
        """
        if not self.enabled or self.jsonl is not None:
            return
        path = self.out_dir / "log.jsonl"
        if after_step is not None and path.exists():
            _drop_rows_after(path, after_step)
        self.jsonl = open(path, "a", encoding="utf-8")
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if after_step is None else after_step + 1  # TensorBoard hides events from this step on
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)

    def log(self, row: dict, step: int | None = None, prefix: str = "train") -> None:
        """Write one row; numeric entries also go to TensorBoard as `prefix/key`."""
        if not self.enabled:
            return
        if self.jsonl is None:
            first = step if step is not None else row.get("step")
            self.start(first - 1 if isinstance(first, int) else None)
        self.jsonl.write(json.dumps(row, default=float) + "\n")
        self.jsonl.flush()
        if self.writer is not None and step is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
        self.jsonl = self.writer = None


def _drop_rows_after(path: Path, step: int) -> None:
    """Rewrite the JSONL file `path` without rows whose step is beyond `step`, and without a
    line cut short by a stopped process."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        row_step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(row_step, int) or row_step <= step:
            kept.append(line + "\n")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)
