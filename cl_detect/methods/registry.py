"""Method registry: each method package registers itself with one call
(`register_method(name=..., config_cls=..., method_cls=...)`, the peft pattern)."""
from __future__ import annotations

from typing import Any

from cl_detect._config_keys import check_keys_and_types

_METHODS: dict[str, tuple[type, type]] = {}


def register_method(name: str, config_cls: type, method_cls: type) -> None:
    """Register a method under a unique lowercase name."""
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"method names are lowercase identifiers, got {name!r}")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    method_cls.name = name
    _METHODS[name] = (config_cls, method_cls)


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_METHODS)


def method_classes(name: str) -> tuple[type, type]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name: str, options: dict[str, Any] | None = None):
    """Build a method from its name and a dict of config fields (validated by the config)."""
    config_cls, method_cls = method_classes(name)
    check_keys_and_types(config_cls, options, f"option(s) for method {name!r}:")
    return method_cls(config_cls(**(options or {})))
