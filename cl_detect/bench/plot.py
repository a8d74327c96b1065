"""Figures from result files (PNG, matplotlib Agg backend, no display needed).

- `<protocol>_<method>_accuracy.png`: accuracy-matrix heatmap per method, mean
  over seeds; rows = after which task (row "base" = before training), columns
  = evaluated task; AP in %.
- `<protocol>_pareto.png`: retention vs in-domain Pareto scatter, one point per
  method (x = in-domain Avg, y = mean retention ratio over the retention sets,
  error bars = std over seeds); methods with WiSE sweep rows (`wise_alpha`)
  also get the curve of the interpolation weights every seed swept (a
  warning names the seeds whose weights differ). Written only for protocols
  where some method has a retention ratio.
- `<protocol>_task_curves.png`: per task, its AP after every step of the
  sequence (step 0 = base model), one line per method, band = ± std.
Failed runs are left out of every figure. A protocol or method name with
characters other than letters, digits and `+.=_-` is written with them replaced
by `_` and a 6-hex hash of the name appended, so names never share a file.
"""
from __future__ import annotations

import hashlib
import logging
import re
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cl_detect.bench.results import RunResult  # noqa: E402

logger = logging.getLogger(__name__)


def _slug(text: str) -> str:
    """A file-name part for a protocol or method name; a name that had to change gets a short hash of
    itself, so two names that read alike ("a b", "a|b", or two non-Latin names) never share a file."""
    slug = re.sub(r"[^A-Za-z0-9+.=_-]+", "_", text).strip("_")[:80]
    return slug if slug == text else f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:6]}".lstrip("-")


def _label(name: str) -> str:
    """A protocol, method or task name as matplotlib text: `$` would start math mode (and two of them
    could fail to parse), so it is escaped."""
    return name.replace("$", r"\$")


def _nan_stats(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(stack, axis=0, ddof=1) if len(stack) > 1 else np.zeros(stack.shape[1:])
        return np.nanmean(stack, axis=0), np.nan_to_num(std)


def _styles(methods) -> dict[str, dict]:
    """Colour, marker and line style per method, the same in every figure of a protocol. tab10 has ten
    colours (13 methods drew ewc and wise, finetune and zeroshot alike): methods 11-20 take the light
    shades of tab20 (whose dark shades are tab10's) and another marker and line style."""
    colors, markers, lines = plt.get_cmap("tab20"), "osD^v", ("-", "--", "-.", ":", (0, (5, 1)))
    return {method: {"color": colors(2 * (index % 10) + index // 10 % 2), "marker": markers[index // 10 % 5],
                     "linestyle": lines[index // 10 % 5]} for index, method in enumerate(methods)}


def _by_protocol_method(results: Sequence[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        if result.finished:
            groups.setdefault((result.protocol, result.method), []).append(result)
    return groups


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_heatmaps(results: Sequence[RunResult], out_dir: str | Path) -> list[Path]:
    """One heatmap of the mean accuracy matrix per (protocol, method).

    Args:
        results: loaded runs (failed ones are skipped).
        out_dir: folder for the PNG files.

    Returns:
        The written files.
    """
    out_dir = Path(out_dir)
    written = []
    for (protocol, method), runs in _by_protocol_method(results).items():
        mean, _ = _nan_stats(np.stack([r.accuracy for r in runs]) * 100)
        tasks = [_label(t) for t in runs[0].tasks]
        fig, ax = plt.subplots(figsize=(1.2 * len(tasks) + 2.5, 0.9 * len(tasks) + 2))
        image = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", vmin=0, vmax=max(1.0, np.nanmax(mean)))
        for (i, j), value in np.ndenumerate(mean):
            text = "n/a" if np.isnan(value) else f"{value:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isnan(value) or value < 0.6 * np.nanmax(mean) else "black")
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
        ax.set_yticks(range(len(tasks) + 1), ["base"] + tasks)
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
        ax.set_title(f"{_label(protocol)}: {_label(method)} (AP %, {len(runs)} seed{'s' * (len(runs) > 1)})",
                     fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
        written.append(_save(fig, out_dir / f"{_slug(protocol)}_{_slug(method)}_accuracy.png"))
    return written


def _mean_retention(summary: dict, sets: list[str]) -> float:
    ratios = [summary.get(f"retention_{s}", np.nan) for s in sets]
    ratios = [r for r in ratios if np.isfinite(r)]
    return float(np.mean(ratios)) if ratios else np.nan


def _common_alphas(protocol: str, method: str, runs: list[RunResult]) -> list[float]:
    """The WiSE weights every seed with a sweep swept (the curve averages over those seeds); says which
    seeds or weights are left out rather than drawing a curve of fewer seeds, or none, unannounced."""
    alphas_of = {r.seed: sorted({a for a, _, _ in r.wise_points()}) for r in runs}
    common = sorted(set.intersection(*(set(alphas) for alphas in alphas_of.values() if alphas)))
    if any(alphas != common for alphas in alphas_of.values()):
        swept = ", ".join(f"seed {seed}: {alphas or 'none'}" for seed, alphas in alphas_of.items())
        logger.warning("%s / %s: the seeds swept other WiSE alphas (%s); the Pareto curve shows the alphas every "
                       "seed with a sweep has, averaged over those seeds: %s. Run every seed with the same alphas "
                       "to draw them all", protocol, method, swept, common or "none, so no curve is drawn")
    return common


def plot_pareto(results: Sequence[RunResult], out_dir: str | Path) -> list[Path]:
    """Retention-vs-in-domain scatter per protocol, with WiSE sweeps as curves.

    Args:
        results: loaded runs (failed ones are skipped).
        out_dir: folder for the PNG files.

    Returns:
        The written files (none for protocols without retention sets or without any retention ratio).
    """
    out_dir = Path(out_dir)
    groups = _by_protocol_method(results)
    written = []
    for protocol in dict.fromkeys(p for p, _ in groups):
        methods = {m: runs for (p, m), runs in groups.items() if p == protocol}
        if not any(r.retention_sets for runs in methods.values() for r in runs):
            continue
        fig, ax = plt.subplots(figsize=(6, 4.5))
        styles = _styles(methods)
        for method, runs in methods.items():
            color, marker = styles[method]["color"], styles[method]["marker"]
            points = np.array([(r.summary()["in_domain_avg"], _mean_retention(r.summary(), r.retention_sets))
                               for r in runs]) * 100
            mean, std = _nan_stats(points)
            if np.isfinite(mean).all():
                ax.errorbar(mean[0], mean[1], xerr=std[0], yerr=std[1], fmt=marker, color=color, capsize=3,
                            label=_label(method))
                ax.annotate(_label(method), (mean[0], mean[1]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
            sweeps = [r.wise_points() for r in runs if r.wise_points()]
            alphas = _common_alphas(protocol, method, runs) if sweeps else []
            if alphas:
                curve = np.array([[np.mean([x for a, x, _ in s if a == alpha]) for s in sweeps] for alpha in alphas])
                ratio = np.array([[np.mean([y for a, _, y in s if a == alpha]) for s in sweeps] for alpha in alphas])
                xs, ys = curve.mean(axis=1) * 100, ratio.mean(axis=1) * 100
                ax.plot(xs, ys, "--", marker=".", color=color, label=f"{_label(method)} (WiSE α)")
                for alpha, x, y in zip(alphas, xs, ys):
                    ax.annotate(f"{alpha:g}", (x, y), textcoords="offset points", xytext=(3, -8), fontsize=6,
                                color=color)
        if not ax.has_data():  # an empty figure (and matplotlib's "no artists" warning) would pass for a result
            plt.close(fig)
            logger.warning("%s: no method has a retention ratio (base AP 0 or not applicable on every retention "
                           "set), so no Pareto figure is written", protocol)
            continue
        ax.set_xlabel("in-domain Avg AP (%)")
        ax.set_ylabel("retention ratio, mean over retention sets (%)")
        ax.set_title(f"{_label(protocol)}: retention vs in-domain (upper right is better)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        written.append(_save(fig, out_dir / f"{_slug(protocol)}_pareto.png"))
    return written


def plot_task_curves(results: Sequence[RunResult], out_dir: str | Path) -> list[Path]:
    """Per protocol, one panel per task: its AP over the task sequence, one line per method.

    Args:
        results: loaded runs (failed ones are skipped).
        out_dir: folder for the PNG files.

    Returns:
        The written files.
    """
    out_dir = Path(out_dir)
    groups = _by_protocol_method(results)
    written = []
    for protocol in dict.fromkeys(p for p, _ in groups):
        methods = {m: runs for (p, m), runs in groups.items() if p == protocol}
        tasks = next(iter(methods.values()))[0].tasks
        steps = np.arange(len(tasks) + 1)
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), sharey=True, squeeze=False)
        styles = _styles(methods)
        for method, runs in methods.items():
            mean, std = _nan_stats(np.stack([r.accuracy for r in runs]) * 100)
            for j, ax in enumerate(axes[0]):
                ax.plot(steps, mean[:, j], markersize=3, label=_label(method), **styles[method])
                ax.fill_between(steps, mean[:, j] - std[:, j], mean[:, j] + std[:, j], color=styles[method]["color"],
                                alpha=0.15)
        for j, ax in enumerate(axes[0]):
            ax.axvline(j + 1, color="grey", linestyle=":", linewidth=1)  # the step that trains this task
            ax.set_title(_label(tasks[j]), fontsize=9)
            ax.set_xticks(steps, ["base"] + [f"T{i}" for i in steps[1:]], fontsize=7)
            ax.set_xlabel("after step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("AP (%)")
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))  # outside: inside, it hid lines
        fig.suptitle(f"{_label(protocol)}: per-task AP over the sequence", fontsize=10)
        written.append(_save(fig, out_dir / f"{_slug(protocol)}_task_curves.png"))
    return written


def plot_all(results: Sequence[RunResult], out_dir: str | Path) -> list[Path]:
    """Write every figure for these results into `out_dir` (created if needed)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return (plot_accuracy_heatmaps(results, out_dir) + plot_pareto(results, out_dir)
            + plot_task_curves(results, out_dir))
