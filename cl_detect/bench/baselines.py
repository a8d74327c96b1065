"""What the runner asks a model about the baselines (`zeroshot`, `specialist`).

- `skips_training(model)`: a method sets `skips_training = True` (zeroshot):
  the runner calls the task hooks and evaluates, but does not train.
- `evaluation_applies(model, names)`: a method with `applies_to(names)`
  (specialist) can refuse a vocabulary it has no classifier for; the runner
  then records that evaluation as NaN ("not applicable"), which tables show
  as "–" and the metrics skip (`cl_detect.bench.results.summarize`).
Both read optional attributes, so every other method needs nothing.
"""
from __future__ import annotations

from typing import Sequence


def skips_training(model) -> bool:
    """Whether any method of the `ContinualModel` asks for no training at all."""
    return any(getattr(method, "skips_training", False) for method in model.methods)


def evaluation_applies(model, names: Sequence[str]) -> bool:
    """Whether the model can be scored with these class names (prompts) now."""
    return all(method.applies_to(tuple(names)) for method in model.methods if hasattr(method, "applies_to"))
