"""A minimal protocol file for tests of protocol reading (test_protocols, test_protocol_data)."""
from __future__ import annotations

from pathlib import Path

import yaml


def write_protocol(tmp_path: Path, config: dict) -> Path:
    """`config` written as `tmp_path/p.yaml`."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


MINIMAL = {"name": "p", "base_model": {"checkpoint": "m.pt"},
           "tasks": [{"name": "t", "train": "a.json", "test": "b.json"}]}
