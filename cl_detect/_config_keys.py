"""One check for every config mapping read into a dataclass: unknown keys are errors that list the valid ones."""
from __future__ import annotations

import dataclasses


def reject_unknown_keys(config_cls: type, data: dict | None, what: str) -> None:
    """Raise ValueError naming the keys of `data` that `config_cls` has no field for.

    Args:
        config_cls: the dataclass the mapping becomes.
        data: the mapping (None counts as empty).
        what: how the message names the keys, e.g. "train setting(s)".
    """
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data or {}) - valid)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid: {sorted(valid)}")
