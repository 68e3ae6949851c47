"""PNG plots of a comparison: a final score against a config value, and training curves.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through ``pyplot``: no GUI backend is touched, no global backend is switched, and nothing
happens at import. matplotlib itself is imported only when a plot is drawn.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrpo.compare.records import RunRecord, RunRecordError, Scalar, SkippedRun, read_metrics
from mrpo.compare.render import format_value
from mrpo.compare.table import GroupRow, aggregate, sort_key

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Curves = dict[str, dict[int, float]]  # metric -> {step: value}, as read_metrics returns
SMOOTHED_PREFIX = "train/"  # per-step training metrics are noisy; validation ones are not


def plot_metric_vs(
    runs: Sequence[RunRecord], by: Sequence[str], metric: str, x_key: str, path: Path
) -> Path | None:
    """Plot ``metric`` (mean over seeds, error bars = sample std) against config ``x_key``.

    One line per combination of the other grouping keys ``by`` (for example one per
    ``loss.name``), so runs that differ in anything but the x value and the seed are never
    averaged together. Non-numeric x values are placed at evenly spaced ticks. Returns
    ``None`` (and draws nothing) when no run has the metric.
    """
    series_keys = [k for k in by if k != x_key]
    rows = [r for r in aggregate(runs, [*series_keys, x_key], [metric]) if r.stats[metric].n]
    if not rows:
        return None
    xs = sorted({row.values[-1] for row in rows}, key=sort_key)
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    position = {
        x: (float(x) if numeric and isinstance(x, int | float) else float(i))
        for i, x in enumerate(xs)
    }

    lines: dict[tuple[Scalar, ...], list[GroupRow]] = {}
    for row in rows:
        lines.setdefault(row.values[:-1], []).append(row)
    # Shift the lines slightly apart so error bars at the same x do not hide each other.
    ticks = sorted(position.values())
    step = min((b - a for a, b in itertools.pairwise(ticks)), default=1.0) * 0.03
    fig, ax = _new_figure()
    for i, (label_values, members) in enumerate(lines.items()):
        stats = [m.stats[metric] for m in members]
        shift = (i - (len(lines) - 1) / 2) * step
        ax.errorbar(
            [position[m.values[-1]] + shift for m in members],
            [math.nan if s.mean is None else s.mean for s in stats],
            yerr=[s.std or 0.0 for s in stats],
            marker="o",
            capsize=3,
            label=_label(label_values),
        )
    ax.set_xticks([position[x] for x in xs], [format_value(x) for x in xs])
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {x_key} (mean ± std over seeds)", fontsize=9)
    if series_keys:
        ax.legend(title=" / ".join(series_keys), fontsize=8, title_fontsize=8)
    return _save(fig, path)


def load_curves(runs: Sequence[RunRecord]) -> tuple[dict[Path, Curves], list[SkippedRun]]:
    """Read every run's ``metrics.csv``; unreadable files are returned as skipped runs."""
    curves: dict[Path, Curves] = {}
    problems = []
    for run in runs:
        try:
            curves[run.path] = read_metrics(run.path)
        except RunRecordError as err:
            problems.append(SkippedRun(run.path, f"no training curves: {err}"))
    return curves, problems


def plot_training_curves(
    rows: Sequence[GroupRow],
    by: Sequence[str],
    metric: str,
    curves: Mapping[Path, Curves],
    path: Path,
    smooth: int = 5,
) -> Path | None:
    """Plot ``metric`` over steps, one line per configuration (the mean over its seeds).

    Metrics named ``train/...`` are smoothed with a trailing moving average of ``smooth``
    points after averaging. Returns ``None`` when no run logged the metric.
    """
    fig, ax = _new_figure()
    drawn = 0
    for row in rows:
        per_run = [curves[r.path][metric] for r in row.runs if metric in curves.get(r.path, {})]
        if not per_run:
            continue
        steps, values = mean_curve(per_run)
        if metric.startswith(SMOOTHED_PREFIX):
            values = moving_average(values, smooth)
        ax.plot(steps, values, marker="" if len(steps) > 20 else "o", label=_label(row.values))
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    smoothing = f", moving average of {smooth}" if metric.startswith(SMOOTHED_PREFIX) else ""
    ax.set_title(f"{metric} (mean over seeds{smoothing})", fontsize=9)
    if by:
        ax.legend(title=" / ".join(by), fontsize=8, title_fontsize=8)
    return _save(fig, path)


def mean_curve(curves: Sequence[Mapping[int, float]]) -> tuple[list[int], list[float]]:
    """Average several ``{step: value}`` curves step by step.

    Each step's mean is over the curves that have that step, so a run that logged fewer
    steps still contributes where it has values.
    """
    steps = sorted(set().union(*curves))
    means = []
    for step in steps:
        values = [c[step] for c in curves if step in c]
        means.append(math.fsum(values) / len(values))
    return steps, means


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: point i is the mean of points max(0, i-window+1)..i."""
    if window < 1:
        raise ValueError(f"moving average window must be >= 1, got {window}")
    return [
        math.fsum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
        for i in range(len(values))
    ]


def plot_filename(metric: str, x_key: str | None = None) -> str:
    """A file name for a plot: ``/`` and ``.`` in metric and key names become ``_``."""
    slug = metric.replace("/", "_").replace(".", "_")
    if x_key is None:
        return f"curve_{slug}.png"
    return f"{slug}_vs_{x_key.replace('.', '_').replace('/', '_')}.png"


def _label(values: Sequence[Scalar]) -> str:
    return " / ".join(format_value(v) for v in values) or "all runs"


def _new_figure() -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
