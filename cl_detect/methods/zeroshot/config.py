"""Configuration of the `zeroshot` baseline (it has nothing to set)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ZeroShotConfig:
    """The base model as it is: no field, because nothing trains.

    A run with `zeroshot` evaluates the base model after every task without
    training, so every row of its accuracy matrix equals row 0 and its
    retention ratio is 1: the reference every method's retention is read against.
    """
