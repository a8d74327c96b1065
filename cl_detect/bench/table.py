"""Paper-ready tables from result files: one row per method, mean ± std over seeds.

Columns (per protocol): seeds n, in-domain Avg, forgetting F, BWT, then per
retention set its final AP z[T][s] and retention ratio R_s = z[T][s] / z[0][s],
trainable parameters and wall time. Every metric is recomputed from the
matrices (`RunResult.summary`).

Cells read `mean ± std` (sample std, ddof=1; no ± for one seed). With n ≥ 3
seeds a 95% confidence interval of the mean follows in brackets,
`[low, high]`, from the Student t distribution (`scipy.stats.t.interval`,
n - 1 degrees of freedom, scale = std / sqrt(n)). AP, F, BWT and R are shown in
percent with one decimal. The best mean per column is bold (highest for AP,
BWT and R; lowest for F), comparing the values as displayed so equal-looking
means are all marked. "–" is a metric that is undefined (F and BWT of a
one-task run) or not applicable (a closed-set specialist on other
vocabularies). A value that only some seeds define (e.g. a retention ratio
where one seed's base AP is 0) is the statistic of those seeds and reads
`(n=k)`; CSV gives every metric's n. Failed runs are never averaged: they are listed under the
table with their error message
(the exception line of the recorded traceback). CSV gives plain numbers in the
units of the result files (AP in [0, 1], seconds) and lists failed runs as
rows with status "failed".
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from cl_detect.bench.results import RunResult

FORMATS = ("md", "latex", "csv")


@dataclass(frozen=True)
class Column:
    """One metric column: summary key, header text, how to show it, which way is better."""

    key: str
    header: str
    kind: str  # "percent", "params" or "seconds"
    better: str | None = None  # "high", "low" or None (not marked)


@dataclass
class Stat:
    """Mean, sample std and 95% t-interval of one metric over the finite seed values."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        values = np.array([v for v in values if np.isfinite(v)], dtype=np.float64)
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, math.nan, 0)
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if n >= 2 else math.nan
        low = high = math.nan
        if n >= 3:
            low, high = (mean, mean) if std == 0 else stats.t.interval(0.95, n - 1, loc=mean,
                                                                        scale=std / math.sqrt(n))
        return cls(mean, std, float(low), float(high), n)


@dataclass
class MethodRow:
    """All finished seeds of one (protocol, method)."""

    protocol: str
    method: str
    seeds: list[int]
    stats: dict[str, Stat]


def columns_for(retention_sets: Sequence[str]) -> list[Column]:
    """The table's metric columns for a protocol with these retention sets."""
    columns = [Column("in_domain_avg", "In-domain Avg", "percent", "high"),
               Column("forgetting", "F", "percent", "low"),
               Column("bwt", "BWT", "percent", "high")]
    for name in retention_sets:
        columns += [Column(f"final_{name}", f"{name} AP", "percent", "high"),
                    Column(f"retention_{name}", f"R {name}", "percent", "high")]
    return columns + [Column("trainable_params", "Trainable", "params"),
                      Column("wall_time_s", "Wall time", "seconds")]


def aggregate(results: Sequence[RunResult]) -> dict[str, tuple[list[Column], list[MethodRow], list[RunResult]]]:
    """Group finished runs by (protocol, method) and compute the statistics.

    Args:
        results: loaded runs, any protocols.

    Returns:
        protocol -> (columns, one row per method in first-seen order, failed runs).
    """
    tables = {}
    for protocol in dict.fromkeys(r.protocol for r in results):
        runs = [r for r in results if r.protocol == protocol]
        finished = [r for r in runs if r.finished]
        retention_sets = list(dict.fromkeys(s for r in finished for s in r.retention_sets))
        columns = columns_for(retention_sets)
        rows = []
        for method in dict.fromkeys(r.method for r in finished):
            seeds = [r for r in finished if r.method == method]
            summaries = [{**r.summary(), "trainable_params": float(r.trainable_params),
                          "wall_time_s": r.wall_time_s} for r in seeds]
            rows.append(MethodRow(protocol, method, [r.seed for r in seeds],
                                  {c.key: Stat.of([s.get(c.key, math.nan) for s in summaries]) for c in columns}))
        tables[protocol] = (columns, rows, [r for r in runs if not r.finished])
    return tables


def _shown(column: Column, value: float) -> float:
    return round(value * 100, 1) if column.kind == "percent" else value


def _best(column: Column, rows: list[MethodRow]) -> float | None:
    means = [_shown(column, row.stats[column.key].mean) for row in rows]
    means = [m for m in means if np.isfinite(m)]
    if column.better is None or len(means) < 2:
        return None
    return max(means) if column.better == "high" else min(means)


def _number(column: Column, value: float, fmt: str = "md") -> str:
    if column.kind == "percent":
        text = f"{value * 100:.1f}"
        text = "0.0" if text == "-0.0" else text  # a tiny negative (BWT -0.0004) is zero at this precision
        return text.replace("-", "$-$") if fmt == "latex" else text  # a minus sign, not a hyphen
    if column.kind == "params":
        for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if round(value / size, 2) >= 1:  # 999,999 is 1.00M, not 1000.00K
                return f"{value / size:.2f}{unit}"
        return f"{value:.0f}"
    space = " " if fmt == "md" else "\\,"
    return f"{value:.0f}{space}s" if value < 120 else f"{value / 60:.1f}{space}min"


def _cell(column: Column, stat: Stat, best: float | None, fmt: str, seeds: int) -> str:
    """`mean ± std [interval]`, with `(n=k)` when only k of the row's `seeds` define the value."""
    if stat.n == 0:
        return "–" if fmt == "md" else "--"
    fewer = f" (n={stat.n})" if stat.n < seeds else ""
    mean = _number(column, stat.mean, fmt)
    if best is not None and _shown(column, stat.mean) == best:
        mean = f"**{mean}**" if fmt == "md" else f"\\textbf{{{mean}}}"
    if column.kind != "percent":
        return mean + fewer
    plus_minus = " ± " if fmt == "md" else " $\\pm$ "
    text = mean + (plus_minus + _number(column, stat.std, fmt) if stat.n >= 2 else "")
    if stat.n >= 3:
        interval = f"[{_number(column, stat.ci_low, fmt)}, {_number(column, stat.ci_high, fmt)}]"
        text += f" {interval}" if fmt == "md" else f" {{\\scriptsize {interval}}}"
    return text + fewer


# text-mode LaTeX for every character that is a command or (in the default OT1 font) another glyph;
# a line break would end a comment line or, doubled, a paragraph inside the tabular
_LATEX_SPECIAL = {"\\": "\\textbackslash{}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
                  "|": "\\textbar{}", "<": "\\textless{}", ">": "\\textgreater{}", "\n": " ", "\r": " ",
                  **{char: "\\" + char for char in "&%$#_{}"}}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_labels(protocols: Sequence[str]) -> dict[str, str]:
    """A \\label key per protocol: letters, digits and dashes only (`%` would comment out the brace, `#` is
    an error), numbered where two names give one key ("odinw mini", "odinw_mini"): a key defined twice
    makes every \\ref to it point at the last table."""
    labels: dict[str, str] = {}
    for protocol in protocols:
        base = re.sub(r"[^A-Za-z0-9]+", "-", protocol).strip("-") or "protocol"
        label, number = base, 1
        while label in labels.values():
            number += 1
            label = f"{base}-{number}"
        labels[protocol] = label
    return labels


def _markdown_escape(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text).replace("|", "\\|")  # a bare pipe splits the cell, a line break the row


def _markdown(protocol: str, columns: list[Column], rows: list[MethodRow], failed: list[RunResult]) -> str:
    best = {c.key: _best(c, rows) for c in columns}
    header = ["Method", "n"] + [_markdown_escape(c.header) for c in columns]
    lines = [f"### {_markdown_escape(protocol)}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [_markdown_escape(row.method), str(len(row.seeds))]
        cells += [_cell(c, row.stats[c.key], best[c.key], "md", len(row.seeds)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "AP, F, BWT and R in %; mean ± std over n seeds, [95% t-interval] when n ≥ 3; "
              "(n=k): only k seeds define the value; bold = best; – = undefined or not applicable."]
    if failed:
        lines += ["", "Failed runs (not averaged):"]
        lines += [f"- {_markdown_escape(r.method)} (seed {r.seed}): {r.error_line}" for r in failed]
    return "\n".join(lines)


def _latex(protocol: str, columns: list[Column], rows: list[MethodRow], failed: list[RunResult], label: str) -> str:
    best = {c.key: _best(c, rows) for c in columns}
    arrows = {"high": " $\\uparrow$", "low": " $\\downarrow$", None: ""}
    header = ["Method", "$n$"] + [_latex_escape(c.header) + arrows[c.better] for c in columns]
    lines = ["\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{Continual fine-tuning on {_latex_escape(protocol)}: mean $\\pm$ std over seeds "
             f"(95\\% t-interval when $n \\geq 3$); AP, F, BWT and R in \\%.}}",
             f"\\label{{tab:{label}}}",
             "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule"]
    for row in rows:
        cells = [_latex_escape(row.method), str(len(row.seeds))]
        cells += [_cell(c, row.stats[c.key], best[c.key], "latex", len(row.seeds)) for c in columns]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    # failed runs stay visible to the author without ending up in the paper
    lines += [f"% failed run (not averaged): {_latex_escape(r.method)} seed {r.seed}: {r.error_line}" for r in failed]
    return "\n".join(lines)


def _plain(value: float) -> str:
    if not np.isfinite(value):
        return ""
    return str(int(value)) if float(value).is_integer() else repr(round(float(value), 6))


def _csv(tables: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    all_columns = list(dict.fromkeys(c for columns, _, _ in tables.values() for c in columns))
    metric_keys = [c.key for c in all_columns if c.kind == "percent"]
    fields = [f"{k}_{part}" for k in metric_keys for part in ("mean", "std", "ci_low", "ci_high", "n")]
    writer.writerow(["protocol", "method", "status", "n", "seeds"] + fields +
                    ["trainable_params", "wall_time_s", "error"])
    for protocol, (_, rows, failed) in tables.items():
        for row in rows:
            values = []
            for key in metric_keys:
                stat = row.stats.get(key, Stat.of([]))
                values += [_plain(stat.mean), _plain(stat.std), _plain(stat.ci_low), _plain(stat.ci_high), stat.n]
            writer.writerow([protocol, row.method, "finished", len(row.seeds), " ".join(map(str, row.seeds))] +
                            values + [_plain(row.stats["trainable_params"].mean),
                                      _plain(row.stats["wall_time_s"].mean), ""])
        for run in failed:
            writer.writerow([protocol, run.method, "failed", 0, run.seed] + [""] * len(fields) +
                            ["", _plain(run.wall_time_s), run.error_line])
    return buffer.getvalue()


def format_table(results: Sequence[RunResult], fmt: str = "md") -> str:
    """The comparison table of all runs, one row per method and one table per protocol.

    Args:
        results: runs from `load_results` (finished and failed).
        fmt: "md" (Markdown), "latex" (booktabs table) or "csv" (plain numbers).

    Returns:
        The table text.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    tables = aggregate(results)
    if fmt == "csv":
        return _csv(tables)
    if fmt == "md":
        return "\n\n".join(_markdown(protocol, *parts) for protocol, parts in tables.items()) + "\n"
    labels = _latex_labels(list(tables))
    return "\n\n".join(_latex(protocol, *parts, labels[protocol]) for protocol, parts in tables.items()) + "\n"
