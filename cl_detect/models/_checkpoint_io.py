"""Safe checkpoint reading and atomic writing.

`read_checkpoint` tries `torch.load(weights_only=True)` first. Official
YOLO-World files are mmengine pickles whose `meta` holds mmengine/numpy objects
that the weights-only loader refuses; for those a restricted unpickler is used
that rebuilds tensors and plain containers, turns mmengine/mmdet/mmyolo/numpy
objects into inert placeholders, and refuses every other global.

A file that cannot be read at all (empty, truncated, corrupted, or not a torch
file) raises a ValueError naming it; refused globals keep their own error.
"""
from __future__ import annotations

import os
import pickle
import struct
import tempfile
import types
import zipfile
from pathlib import Path

import torch

# Globals a checkpoint may name and that are safe to construct.
_ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor"), ("torch", "Size"), ("torch", "device"), ("torch", "dtype"),
}
_INERT_MODULES = ("mmengine", "mmdet", "mmyolo", "mmcv", "numpy", "yolo_world")
# What torch.load raises on bytes it cannot parse (the pickle and zip readers differ; a zip cut
# inside its data records raises OSError errno 22; a few bytes that start like a pickle opcode with
# an argument, e.g. a 4-byte file "junk", struct.error; a bad protocol byte, ValueError).
PARSE_ERRORS = (EOFError, pickle.UnpicklingError, RuntimeError, KeyError, IndexError, UnicodeDecodeError, OSError,
                struct.error, ValueError)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # legacy (pre-zip) torch files are pickles that start with the PROTO opcode


class _RefusedGlobal(pickle.UnpicklingError):
    """The allow-list unpickler met a global it will not construct."""


class _Placeholder:
    """Stands in for an object of an untrusted class inside checkpoint metadata."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        if module.split(".")[0] in _INERT_MODULES:
            return type(name, (_Placeholder,), {})
        raise _RefusedGlobal(
            f"refusing to unpickle {module}.{name}: not a tensor, container or known checkpoint metadata; "
            f"if you trust this file, load it yourself with torch.load(weights_only=False) and pass the state dict")


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


# torch's legacy (non-zip) reader calls pickle_module.load for the header records, so
# `load` must be restricted too, not only `Unpickler`.
_restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=_restricted_load,
                                           __name__="cl_detect_restricted_pickle")


def _zip_is_intact(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _unreadable_reason(path: Path, header: bytes) -> str | None:
    """What is wrong with a file torch.load failed on, or None if it is an intact torch zip archive."""
    if not header:
        return "the file is empty, 0 bytes"
    if header.startswith(_ZIP_MAGIC):
        if _zip_is_intact(path):
            return None
        return f"a zip archive of {path.stat().st_size} bytes that is truncated or corrupted"
    if header.startswith(_PICKLE_PROTO):
        return (f"a pickle of {path.stat().st_size} bytes (legacy torch format) that is truncated, "
                "corrupted or not written by torch.save")
    return f"not a torch file: it starts with {header!r}"


def _load(path: Path, map_location: str | torch.device):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # mmengine checkpoints: retry with the allow-list unpickler (still no code execution).
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_restricted_pickle)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a checkpoint without executing arbitrary pickled code.

    Args:
        path: a file written by torch.save (cl_detect or official YOLO-World layout).
        map_location: where tensors are put, as in torch.load.

    Returns:
        The unpickled object.

    Raises:
        ValueError: the file is empty, truncated, corrupted or not a torch file.
        pickle.UnpicklingError: a readable file names a global outside the allow-list.
    """
    path = Path(path)
    if path.is_dir():  # e.g. a run's folder: "does not exist" sent people looking for a typo
        raise IsADirectoryError(f"checkpoint {path} is a folder; give the checkpoint file (.pt, .pth) itself")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return _load(path, map_location)
    except PARSE_ERRORS as err:
        with open(path, "rb") as handle:
            header = handle.read(16)
        # a refused global in a real pickle or zip is the allow-list's own, clearer error
        if isinstance(err, _RefusedGlobal) and header.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
            raise
        reason = _unreadable_reason(path, header)
        if reason is None:  # an intact archive: the error is not about the bytes (e.g. map_location)
            raise
        raise ValueError(
            f"{path}: not a readable torch checkpoint ({reason}); "
            "pass a file written by torch.save, re-downloading or re-saving it if a copy was interrupted"
        ) from err


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) so that an interruption leaves the previous file, never half of one."""
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _atomic_write(path: str | Path, write) -> None:
    """`write(binary handle)` into a temporary file in the same folder, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it owner-only; give it what open() would
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
