"""What keeps a training session safe: one process per training folder, and a Ctrl-C that
lets the optimizer step under way finish so that it can be checkpointed (`train.train_one_task`)."""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from cl_detect.engine.distributed import is_main_process

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks, so the folder is not guarded there
    fcntl = None


_HELD: set[str] = set()  # folders this process holds (a holder may call code that takes it again)


@contextmanager
def only_process_in(out_dir: Path):
    """Hold an exclusive lock on `out_dir/.train.lock` (rank 0; the OS drops it if the process dies).
    Re-entrant within one process: `pretrain` holds it around `train_one_task`, which takes it too.

    Raises:
        ValueError: naming the folder and the process that holds it.
    """
    key = str(Path(out_dir).resolve())
    if fcntl is None or not is_main_process() or key in _HELD:  # other torchrun ranks only read the checkpoint
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".train.lock", "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ValueError(f"{out_dir} is in use: another training process (pid {handle.read().strip() or '?'}) "
                             f"writes its checkpoint and log there; wait for it to end, or give this run another "
                             f"out_dir (cl-detect run: another --out)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)


class StopOnInterrupt:
    """While entered (in the main thread): the first SIGINT only sets `requested`, which the loop
    reads after each optimizer step; a second one raises KeyboardInterrupt at once. The previous
    handler comes back on exit. DataLoader workers, which a terminal's Ctrl-C reaches too, ignore
    it (`data.loader.seed_worker`), so the step under way can still take its micro-batches."""

    def __init__(self):
        self.requested, self._installed, self._previous, self._pid = False, False, None, os.getpid()

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous, self._installed = signal.signal(signal.SIGINT, self._handle), True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:  # None: the previous handler was not set from Python; the default stands in
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if os.getpid() == self._pid:  # os.write: the handler may run inside a print (tqdm's) to stderr
            os.write(2, b"\nCtrl-C: finishing this optimizer step to checkpoint it (Ctrl-C again stops at once, "
                        b"losing the work since the last checkpoint)\n")
