"""Detector registry: variant functions register themselves with `@register_detector`
and `create_detector(name, **kwargs)` builds one (the timm `_registry` pattern)."""
from __future__ import annotations

from typing import Callable

from torch import nn

_DETECTORS: dict[str, Callable[..., nn.Module]] = {}


def register_detector(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a variant function under its own name."""
    name = fn.__name__
    if name in _DETECTORS:
        raise ValueError(f"detector {name!r} is registered twice")
    if name != name.lower():
        raise ValueError(f"detector names are lowercase, got {name!r}")
    _DETECTORS[name] = fn
    return fn


def create_detector(name: str, **kwargs) -> nn.Module:
    """Build a registered detector; kwargs override its architecture settings
    (e.g. `text_dim=384`, `use_bn_head=False`, `backbone="timm:resnet18"`)."""
    if name not in _DETECTORS:
        raise ValueError(f"unknown detector {name!r}; registered: {', '.join(list_detectors())}")
    return _DETECTORS[name](**kwargs)


def list_detectors() -> list[str]:
    """Names of all registered detectors, sorted."""
    return sorted(_DETECTORS)
