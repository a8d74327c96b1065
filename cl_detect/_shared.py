"""Locate the shared data folder (real datasets, official-model fixtures).

Tests and examples look in `$CL_DETECT_SHARED`, then in `../shared` beside the
checkout. Nothing is downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path | None:
    """Return the shared folder, or None when it is absent."""
    env = os.environ.get("CL_DETECT_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared")
    for path in candidates:
        if path.is_dir():
            return path
    return None
