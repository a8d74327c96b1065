"""Safe checkpoint reading and atomic writing.

`read_checkpoint` tries `torch.load(weights_only=True)` first. Official
YOLO-World files are mmengine pickles whose `meta` holds mmengine/numpy objects
that the weights-only loader refuses; for those a restricted unpickler is used
that rebuilds tensors and plain containers, turns mmengine/mmdet/mmyolo/numpy
objects into inert placeholders, and refuses every other global.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import types
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
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: not a tensor, container or known checkpoint metadata; "
            f"if you trust this file, load it yourself with torch.load(weights_only=False) and pass the state dict")


_restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=pickle.load,
                                           __name__="cl_detect_restricted_pickle")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a checkpoint without executing arbitrary pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # mmengine checkpoints: retry with the allow-list unpickler (still no code execution).
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_restricted_pickle)


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
