"""Locate the shared data folder (real datasets, official-model fixtures) and expand
`${VAR}` in config paths (`${CL_DETECT_SHARED}` falls back to that folder).

Tests and examples look in `$CL_DETECT_SHARED`, then in `../shared` beside the
checkout. Nothing is downloaded.
"""
from __future__ import annotations

import os
import re
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


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_variables(value, environment: dict[str, str] | None = None):
    """Replace `${VAR}` in every string of a nested structure; unset variables are errors."""
    environment = dict(os.environ if environment is None else environment)
    if "CL_DETECT_SHARED" not in environment:
        shared = shared_dir()
        if shared is not None:
            environment["CL_DETECT_SHARED"] = str(shared)

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in environment:
            raise ValueError(f"the config uses ${{{name}}} but the environment variable {name} is not set; "
                             f"export {name}=/path/to/the/data (see docs/protocols.md)")
        return environment[name]

    if isinstance(value, str):
        return _VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [expand_variables(v, environment) for v in value]
    if isinstance(value, dict):
        return {k: expand_variables(v, environment) for k, v in value.items()}
    return value
