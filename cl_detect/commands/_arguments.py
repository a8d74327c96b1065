"""Argument types and the help layout shared by the `cl-detect` commands."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """argparse's layout, with "(default: X)" after options whose help does not already say
    their default (a None or False default means "unset" and is not shown)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text and default not in (None, False, [], argparse.SUPPRESS)
                and action.nargs != 0):
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
            text = f"{text} (default: {shown})" if text else f"(default: {shown})"
        return text


def _integer(text: str, smallest: int, meaning: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < smallest:
        raise argparse.ArgumentTypeError(f"{value} is not {meaning}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (image counts, job counts, sizes)."""
    return _integer(text, 1, "a positive integer (1 or more)")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    return _integer(text, 0, "a non-negative integer (0 or more)")


def image_size(text: str) -> int:
    """A detector input size: a positive multiple of the largest stride (32)."""
    from cl_detect._config_keys import check_image_size
    value = _integer(text, 1, "a positive integer (1 or more)")
    try:
        check_image_size(value, "the image size")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value
