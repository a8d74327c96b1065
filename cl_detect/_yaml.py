"""YAML for config files: PyYAML's safe loader, reading `1e-3` as the number it means.

PyYAML follows YAML 1.1, whose float pattern needs a dot, so `lr: 1e-3` or `strength: 1e3`
come back as strings and fail (or compare as text) far from the config file. YAML 1.2 and
most readers take them as floats; this loader does too. Nothing else changes.
"""
from __future__ import annotations

import re

import yaml


class ConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` plus exponent floats without a dot (`1e-3`, `-2E5`)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str):
    """Parse YAML text with `ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
