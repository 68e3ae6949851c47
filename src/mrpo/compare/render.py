"""Render a :class:`~mrpo.compare.table.Comparison` as aligned text, markdown or CSV.

Text and markdown are for reading: each score cell is ``mean ± std`` (4 decimals), the std is
left out for a single run, and ``(n=k)`` marks a score that only k of the row's runs reported.
Both end with the notes and the list of skipped runs. CSV is for further processing: full
precision and three columns per metric (``<metric>``, ``<metric> std``, ``<metric> n``); it
holds only the table.
"""

from __future__ import annotations

import csv
import io

from mrpo.compare.records import Scalar
from mrpo.compare.table import Comparison, GroupRow, Stat

FORMATS = ("text", "markdown", "csv")
LEGEND = (
    "cells: mean ± sample std (ddof=1) over seeds; std left blank for a single run; "
    "(n=k): only k runs of the row reported that score"
)


def render(comparison: Comparison, fmt: str) -> str:
    """Render in one of :data:`FORMATS`."""
    renderers = {"text": render_text, "markdown": render_markdown, "csv": render_csv}
    if fmt not in renderers:
        raise ValueError(f"--format: expected one of {FORMATS}, got {fmt!r}")
    return renderers[fmt](comparison)


def render_text(comparison: Comparison) -> str:
    """An aligned plain-text table with a heading, notes and skipped runs."""
    lines = [_heading(comparison), LEGEND, ""]
    if comparison.rows:
        header, body = _cells(comparison)
        numeric_from = len(comparison.by)  # key columns left-aligned, the rest right-aligned
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i < numeric_from else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        lines += [line(header), "  ".join("-" * w for w in widths)]
        lines += [line(row) for row in body]
    lines += _trailer(comparison, bullet="  ")
    return "\n".join(lines) + "\n"


def render_markdown(comparison: Comparison) -> str:
    """A GitHub-flavoured markdown table with a heading, notes and skipped runs."""
    lines = [_heading(comparison), "", LEGEND, ""]
    if comparison.rows:
        header, body = _cells(comparison)
        align = ["---"] * len(comparison.by) + ["---:"] * (len(header) - len(comparison.by))
        for cells in [header, align, *body]:
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += _trailer(comparison, bullet="- ")
    return "\n".join(lines) + "\n"


def render_csv(comparison: Comparison) -> str:
    """The table as CSV: key columns, ``n``, ``seeds``, then mean/std/n per metric."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [*comparison.by, "n", "seeds"]
    for metric in comparison.metrics:
        header += [metric, f"{metric} std", f"{metric} n"]
    writer.writerow(header)
    for row in comparison.rows:
        cells = [_csv_value(v) for v in row.values]
        cells += [str(row.n), ",".join(format_value(s) for s in row.seeds)]
        for metric in comparison.metrics:
            stat = row.stats[metric]
            cells += [_csv_value(stat.mean), _csv_value(stat.std), str(stat.n)]
        writer.writerow(cells)
    return out.getvalue()


def format_value(value: Scalar) -> str:
    """A config value as a short label (YAML spelling for booleans and null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_stat(stat: Stat, row_n: int) -> str:
    """``mean ± std`` with 4 decimals; ``-`` when no run of the row reported the score."""
    if stat.n == 0 or stat.mean is None:
        return "-"
    text = f"{stat.mean:.4f}" if stat.std is None else f"{stat.mean:.4f} ± {stat.std:.4f}"
    return text if stat.n == row_n else f"{text} (n={stat.n})"


def _cells(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = [*comparison.by, "n", "seeds", *comparison.metrics]
    return header, [_row_cells(row, comparison.metrics) for row in comparison.rows]


def _row_cells(row: GroupRow, metrics: tuple[str, ...]) -> list[str]:
    cells = [format_value(v) for v in row.values]
    cells += [str(row.n), ",".join(format_value(s) for s in row.seeds)]
    return cells + [format_stat(row.stats[m], row.n) for m in metrics]


def _heading(comparison: Comparison) -> str:
    runs = sum(row.n for row in comparison.rows)
    grouping = f"grouped by {', '.join(comparison.by)}" if comparison.by else "one configuration"
    return f"{runs} finished runs in {len(comparison.rows)} configurations ({grouping})"


def _trailer(comparison: Comparison, bullet: str) -> list[str]:
    lines: list[str] = []
    if not comparison.rows:
        lines += ["No finished runs to compare."]
    if comparison.notes:
        lines += ["", "Notes:"] + [f"{bullet}{note}" for note in comparison.notes]
    if comparison.skipped:
        lines += ["", f"Skipped runs ({len(comparison.skipped)}):"]
        lines += [f"{bullet}{s.describe()}" for s in comparison.skipped]
    return lines


def _csv_value(value: Scalar) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return format_value(value)
    return repr(value) if isinstance(value, float) else str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")
