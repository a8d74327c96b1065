"""Configuration of the `wise` method."""
from __future__ import annotations

from dataclasses import dataclass, field

from cl_detect._config_keys import is_number

ANCHORS = ("base", "previous_task")


@dataclass
class WiseConfig:
    """WiSE-FT: interpolate weights between the pre-fine-tuning anchor and the fine-tuned detector.

    Args:
        alpha: the coefficient applied after every task:
            theta = (1 - alpha) * theta_anchor + alpha * theta_finetuned
            (0 = the anchor exactly, 1 = the fine-tuned detector exactly).
        sweep: coefficients each evaluated after a task (needs the harness to pass
            `TaskContext.extras["evaluate_fn"]`); results are kept in
            `WiseMethod.sweep_results` and written to `<out_dir>/wise_sweep.json`.
            The fixed `alpha` is applied afterwards either way.
        anchor: "base" (the detector before the first task, default) or
            "previous_task" (the detector at the start of each task).
    """

    alpha: float = 0.5
    sweep: list[float] = field(default_factory=list)
    anchor: str = "base"

    def __post_init__(self):
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not isinstance(self.sweep, (list, tuple)) or not all(
                is_number(a) for a in self.sweep):
            raise ValueError(f"sweep must be a list of coefficients in [0, 1], without quotes, got {self.sweep!r}")
        self.sweep = [float(a) for a in self.sweep]
        if any(not 0 <= a <= 1 for a in self.sweep):
            raise ValueError(f"sweep coefficients must be in [0, 1], got {self.sweep}")
        if len(set(self.sweep)) != len(self.sweep):
            raise ValueError(f"sweep lists a coefficient twice: {self.sweep}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {self.anchor!r}")
