"""Helpers to use the official-model fixtures in ../shared/fixtures/yolo_world."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np


@lru_cache(maxsize=1)
def official_weights_module(fixture_dir: Path):
    spec = importlib.util.spec_from_file_location("official_weights", fixture_dir / "official_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_state_dict(fixture_dir: Path, size: str) -> dict:
    """The deterministic official-layout state dict the references were computed with."""
    module = official_weights_module(fixture_dir)
    return module.make_state_dict(module.load_manifest(fixture_dir / f"manifest_v2_{size}.json"))


def reference(fixture_dir: Path, size: str) -> dict[str, np.ndarray]:
    return dict(np.load(fixture_dir / f"reference_v2_{size}.npz"))
