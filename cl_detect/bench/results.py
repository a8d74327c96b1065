"""Load and validate the JSON result files the runner writes, one per (protocol, method, seed).

A result file holds the run's status and, when it finished, the accuracy matrix
(T+1, T) and retention matrix (T+1, S), both with row 0 = the base model before
any training (see `cl_detect.eval.continual`). Tables and plots never trust a
stored summary: `summarize()` recomputes every metric from the matrices.

Matrices may contain NaN where an evaluation does not apply (the closed-set
`specialist` has no head for a vocabulary it was not trained on). The summary
then follows the formulas over the defined entries only: forgetting's max runs
over the rows where a[l][j] is defined, zero-shot transfer averages the defined
a[i][j]; a metric with no defined entry is NaN. The last row and the diagonal
must be defined (`cl_detect.eval.continual.check_required_cells`): a finished
result with null there is refused when read, naming the file and the cell.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cl_detect.eval.continual import check_required_cells, continual_summary
from cl_detect.engine.state import settings_changes

STATUSES = ("finished", "failed")
_ALWAYS = ("protocol", "method", "seed", "status")
_WHEN_FINISHED = ("tasks", "retention_sets", "accuracy_matrix", "retention_matrix")


class ResultError(ValueError):
    """A result file that cannot be read; the message names the file."""


def error_message(error: str | None) -> str:
    """The first line of a failed run's exception: in a recorded traceback, the first
    unindented line after the last frame (a message may span lines), else the text's first line."""
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    if not lines:
        return "no error text recorded"
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if not lines[0].startswith("Traceback") or not frames:
        return lines[0]
    return next((line for line in lines[frames[-1] + 1:] if not line.startswith(" ")), lines[-1]).strip()


@dataclass
class RunResult:
    """One (protocol, method, seed) run as read from its JSON file.

    Args:
        source: file the result was read from.
        protocol, method, seed, status, error: identity and outcome of the run.
        tasks, retention_sets: names, in matrix column order.
        accuracy: (T+1, T) AP in [0, 1], row 0 = before training (empty for failed runs).
        retention: (T+1, S) AP on the retention sets, row 0 = before training.
        rows: the typed result rows (method, seed, train_task, eval_set, metric, value[, wise_alpha]).
        wall_time_s, peak_memory_mb, trainable_params, total_params: run cost (NaN / 0 when absent).
        data: the whole JSON object, for fields this module does not interpret.
    """

    source: str
    protocol: str
    method: str
    seed: int
    status: str
    error: str | None = None
    tasks: list[str] = field(default_factory=list)
    retention_sets: list[str] = field(default_factory=list)
    accuracy: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    retention: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    rows: list[dict] = field(default_factory=list)
    wall_time_s: float = math.nan
    peak_memory_mb: float = math.nan
    trainable_params: int = 0
    total_params: int = 0
    data: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def error_line(self) -> str:
        """The error's message (what tables show for a failed run); see `error_message`."""
        return error_message(self.error)

    def summary(self) -> dict[str, float]:
        """The continual metrics recomputed from the matrices (see `summarize`)."""
        return summarize(self.accuracy, self.retention, self.retention_sets)

    def wise_points(self) -> list[tuple[float, float, float]]:
        """(alpha, in-domain Avg, mean retention ratio) per WiSE interpolation weight.

        Read from the AP rows carrying `wise_alpha` that were evaluated after the
        last task; the ratio divides by the base model's AP (retention row 0).
        """
        last = self.tasks[-1] if self.tasks else None
        by_alpha: dict[float, dict[str, float]] = {}
        for row in self.rows:
            if row.get("wise_alpha") is None or row.get("train_task") != last or row.get("metric", "AP") != "AP":
                continue  # rows are typed: an AP50 row of the same set must not overwrite its AP
            by_alpha.setdefault(float(row["wise_alpha"]), {})[row["eval_set"]] = float(row["value"])
        points = []
        for alpha, values in sorted(by_alpha.items()):
            in_domain = [values[t] for t in self.tasks if t in values]
            ratios = [values[s] / self.retention[0, i] for i, s in enumerate(self.retention_sets)
                      if s in values and self.retention[0, i] > 0]
            if in_domain and ratios:
                points.append((alpha, float(np.mean(in_domain)), float(np.mean(ratios))))
        return points


def _nan_forgetting(acc: np.ndarray) -> float:
    num_tasks = acc.shape[1]
    if num_tasks < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        best = np.nanmax(acc[1:num_tasks, :num_tasks - 1], axis=0)
        return float(np.nanmean(best - acc[num_tasks, :num_tasks - 1]))


def _nan_zero_shot(acc: np.ndarray) -> float:
    num_tasks = acc.shape[1]
    if num_tasks < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_task = [np.nanmean(acc[1:j, j - 1]) for j in range(2, num_tasks + 1)]
        return float(np.nanmean(per_task))


def summarize(accuracy: np.ndarray, retention: np.ndarray, retention_sets: Sequence[str]) -> dict[str, float]:
    """Continual metrics of one run via `cl_detect.eval.continual.continual_summary`.

    Args:
        accuracy: (T+1, T) accuracy matrix, row 0 = before training.
        retention: (T+1, S) retention matrix.
        retention_sets: S names.

    Returns:
        in_domain_avg, forgetting, bwt, zero_shot_transfer, retention_<set>, final_<set>
        (and ZCOCO / ZLVIS); NaN-aware where the matrix has not-applicable entries.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    summary = continual_summary(accuracy, np.asarray(retention, dtype=np.float64).reshape(len(accuracy), -1),
                                list(retention_sets))
    if np.isnan(accuracy).any():
        summary["forgetting"] = _nan_forgetting(accuracy)
        summary["zero_shot_transfer"] = _nan_zero_shot(accuracy)
    return summary


def _matrix(data: dict, key: str, shape: tuple[int, int], source: str) -> np.ndarray:
    try:
        # null marks a not-applicable evaluation; json has no NaN literal in strict writers
        matrix = np.array([[math.nan if v is None else v for v in row] for row in data[key]], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ResultError(f"{source}: {key} must be a list of lists of numbers ({err})") from None
    matrix = matrix.reshape(shape) if matrix.size == 0 else matrix
    if matrix.shape != shape:
        raise ResultError(f"{source}: {key} has shape {matrix.shape}, expected {shape} "
                          f"(row 0 = before training, then one row per task)")
    return matrix


def _number(value) -> float:
    """A recorded measurement; None (not measured) reads as NaN, 0 stays 0."""
    return math.nan if value is None else float(value)


def validate_result(data: dict, source: str) -> RunResult:
    """Check one loaded result object and turn it into a `RunResult`.

    Args:
        data: the parsed JSON object.
        source: its file name, used in every error message.

    Returns:
        The result.

    Raises:
        ResultError: a missing field, an unknown status or a matrix of the wrong shape.
    """
    if not isinstance(data, dict):
        raise ResultError(f"{source}: a result file holds one JSON object, got {type(data).__name__}")
    missing = [k for k in _ALWAYS if k not in data]
    if data.get("status") == "finished":
        missing += [k for k in _WHEN_FINISHED if k not in data]
    if missing:
        raise ResultError(f"{source}: missing field(s) {', '.join(missing)}")
    if data["status"] not in STATUSES:
        raise ResultError(f"{source}: status must be one of {STATUSES}, got {data['status']!r}")
    try:
        result = RunResult(source=source, protocol=str(data["protocol"]), method=str(data["method"]),
                           seed=int(data["seed"]), status=data["status"], error=data.get("error"),
                           rows=list(data.get("rows") or []), data=data,
                           wall_time_s=_number(data.get("wall_time_s")),
                           peak_memory_mb=_number(data.get("peak_memory_mb")),
                           trainable_params=int(data.get("trainable_params") or 0),
                           total_params=int(data.get("total_params") or 0))
    except (TypeError, ValueError) as err:  # a hand-edited field: name the file, not just the value
        raise ResultError(f"{source}: seed, wall_time_s, peak_memory_mb and the parameter counts must be "
                          f"numbers and rows a list ({err})") from None
    if not result.finished:
        return result
    result.tasks = [str(t) for t in data["tasks"]]
    result.retention_sets = [str(s) for s in data["retention_sets"]]
    if not result.tasks:
        raise ResultError(f"{source}: a finished run needs at least one task")
    num_tasks = len(result.tasks)
    result.accuracy = _matrix(data, "accuracy_matrix", (num_tasks + 1, num_tasks), source)
    result.retention = _matrix(data, "retention_matrix", (num_tasks + 1, len(result.retention_sets)), source)
    try:
        check_required_cells(result.accuracy)
    except ValueError as err:
        raise ResultError(f"{source}: {err}; the run is incomplete (run it again with --force) or its method "
                          f"cannot score a task it has learned") from None
    return result


def _looks_like_result(data) -> bool:
    return isinstance(data, dict) and "status" in data and "method" in data


def load_results(paths: Sequence[str | Path]) -> list[RunResult]:
    """Read result files; a folder contributes every result JSON below it.

    Files named explicitly must be results; inside folders, JSON files that are
    not results (resolved configs, logs) are skipped, but a file that is not
    valid JSON at all is an error (it may be a result cut short).

    Args:
        paths: files and/or folders.

    Returns:
        Results sorted by (protocol, method, seed).

    Raises:
        ResultError: an unreadable file, a bad result, nothing found at all, two files for one
            (protocol, method, seed), or runs of one protocol over different task lists.
    """
    results, read = [], set()
    for path in map(Path, paths):
        if path.is_dir():
            files, explicit = sorted(path.rglob("*.json")), False
        elif path.exists():
            files, explicit = [path], True
        else:
            raise ResultError(f"{path}: no such file or folder")
        for file in files:
            if file.resolve() in read:  # named twice, or inside two of the given folders
                continue
            read.add(file.resolve())
            try:
                data = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                # never skipped: a result file cut short (a copy or sync that stopped) would drop a seed unseen
                raise ResultError(f"{file}: not valid JSON ({err}); if it is a result cut short, run its "
                                  f"command again with --force, else move it out of the folder") from None
            if explicit or _looks_like_result(data):
                results.append(validate_result(data, str(file)))
    if not results:
        raise ResultError(f"no result files found in {', '.join(map(str, paths))}")
    check_comparable(results)
    return sorted(results, key=lambda r: (r.protocol, r.method, r.seed))


def _eval_image_size(result: RunResult):
    """The image size the run was scored at, from its saved config; None when not recorded."""
    config = result.data.get("config")
    scoring = config.get("eval") if isinstance(config, dict) else None
    return scoring.get("image_size") if isinstance(scoring, dict) else None


def _settings(result: RunResult) -> dict | None:
    """The run's recorded `settings` without its seed; None when not recorded (files before 2026-11-23)."""
    settings = result.data.get("settings")
    if not isinstance(settings, dict):
        return None
    train = {k: v for k, v in (settings.get("train") or {}).items() if k != "seed"}
    return {**settings, "train": train}


def _recorded(what: str, result: RunResult):
    if what == "fingerprint":
        return result.data.get("data_fingerprint")
    return _eval_image_size(result) if what == "size" else _settings(result)


def _mismatch(what: str, first: RunResult, result: RunResult) -> str:
    both = f"{first.source} and {result.source}"
    if what == "settings":
        changes = "; ".join(settings_changes(_settings(first), _settings(result)))
        return (f"{both} are seeds of method {result.method!r} on protocol {result.protocol!r} but were run with "
                f"other settings ({changes}); one row would average both: give the method another label, or "
                f"table them separately")
    if what == "size":
        reason = (f"scored at other image sizes (eval.image_size {_eval_image_size(first)} vs "
                  f"{_eval_image_size(result)}), so their APs do not compare")
    else:
        reason = (f"made with other data or prompts (data fingerprints "
                  f"{sorted([_recorded(what, first), _recorded(what, result)])}: another split, image subset or "
                  f"prompt list)")
    return (f"{both} are both protocol {result.protocol!r} but were {reason}; give the protocol versions different "
            f"names, or table them separately")


def check_comparable(results: Sequence[RunResult]) -> None:
    """Refuse what would skew a table: two files for one (protocol, method, seed) (one seed counted
    twice), and runs of one protocol name over different task lists or retention sets (matrices of
    other shapes, or of other columns), over other data (`data_fingerprint`, when both record one),
    or scored at another image size (`config.eval.image_size`, when both record one); and seeds of one
    method run with other settings (`settings` but the seed, when both record them: e.g. a lora
    rank changed between seeds under one row).

    Raises:
        ResultError: naming both files and the fix.
    """
    by_run, tasks_of, recorded = {}, {}, {}
    for result in results:
        key = (result.protocol, result.method, result.seed)
        if key in by_run:
            raise ResultError(f"{by_run[key].source} and {result.source} are both protocol {result.protocol!r}, "
                              f"method {result.method!r}, seed {result.seed}: a seed would count twice; pass one "
                              f"of them (a copy, or an older run of the same seed)")
        by_run[key] = result
        if not result.finished:  # a failed run has no matrices to compare
            continue
        first = tasks_of.setdefault(result.protocol, result)
        # each is compared with the first run that records it (older files may lack it)
        for what, group, value in (("fingerprint", result.protocol, result.data.get("data_fingerprint")),
                                   ("size", result.protocol, _eval_image_size(result)),
                                   ("settings", (result.protocol, result.method), _settings(result))):
            if value is None:
                continue
            reference = recorded.setdefault((what, group), result)
            before = _recorded(what, reference)
            if (settings_changes(before, value) if what == "settings" else before != value):
                raise ResultError(_mismatch(what, reference, result))
        for what in ("tasks", "retention_sets"):
            if getattr(result, what) != getattr(first, what):
                raise ResultError(f"{first.source} and {result.source} are both protocol {result.protocol!r} but "
                                  f"over different {what.replace('_', ' ')} ({getattr(first, what)} vs "
                                  f"{getattr(result, what)}); give the protocol versions different names, or "
                                  f"table them separately")
