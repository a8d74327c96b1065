"""What a result records about where it was made: git state, package versions, device."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "numpy", "peft", "open_clip_torch", "timm", "pycocotools", "lvis",
            "sentence-transformers", "cl_detect")
_REPO = Path(__file__).resolve().parents[2]


def git_info() -> dict:
    """Commit hash and whether the working tree had uncommitted changes (None outside a checkout)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_hash": commit, "git_dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when absent)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(device: torch.device) -> dict:
    """The device a run used, in words, with the CPU thread count."""
    info = {"device": str(device), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def run_meta(device: torch.device) -> dict:
    """Everything above in one mapping."""
    return {**git_info(), "versions": package_versions(), **device_info(device)}
