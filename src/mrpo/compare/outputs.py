"""The files of ``mrpo-compare --out DIR``: the table in three formats and the PNG plots.

The plots are the plot metric against a config key (when it takes more than one value) and
training curves per configuration; a note in the table says what was drawn or why not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mrpo.compare.plots import load_curves, plot_filename, plot_metric_vs, plot_training_curves
from mrpo.compare.render import render
from mrpo.compare.table import Comparison

DEFAULT_PLOT_X = "references.num_refs"
DEFAULT_PLOT_METRIC = "final/val/policy_margin_accuracy"
DEFAULT_CURVE_METRICS = ("train/loss", "val/policy_margin_accuracy")
OUTPUT_FILES = {"text": "compare.txt", "markdown": "compare.md", "csv": "compare.csv"}


def check_plot_options(comparison: Comparison, plot_x: str | None, metric: str | None) -> None:
    """Explicit plot options must name a key and a score that some finished run has."""
    runs = [run for row in comparison.rows for run in row.runs]
    if plot_x is not None and runs and not any(plot_x in r.config for r in runs):
        raise ValueError(f"--plot-x: no finished run has config key {plot_x!r}")
    if metric is not None and runs and not any(metric in r.scores for r in runs):
        raise ValueError(f"--plot-metric: no finished run has {metric!r} in summary.json")


def write_outputs(
    comparison: Comparison,
    out: Path,
    plot_x: str | None = None,
    plot_metric: str | None = None,
    curve_metrics: Sequence[str] = DEFAULT_CURVE_METRICS,
) -> Comparison:
    """Write the three tables and the plots in ``out``; return the comparison with the plot
    notes added (``plot_x``, ``plot_metric``: None for the defaults)."""
    out.mkdir(parents=True, exist_ok=True)
    notes = list(comparison.notes)
    skipped = list(comparison.skipped)
    runs = [run for row in comparison.rows for run in row.runs]

    x_key = plot_x or DEFAULT_PLOT_X
    metric = plot_metric or DEFAULT_PLOT_METRIC
    if len({r.config.get(x_key) for r in runs}) < 2:
        notes.append(f"no {metric} vs {x_key} plot: {x_key} takes fewer than two values")
    elif plot_metric_vs(runs, comparison.by, metric, x_key, out / plot_filename(metric, x_key)):
        notes.append(f"plot: {out / plot_filename(metric, x_key)}")
    else:
        notes.append(f"no {metric} vs {x_key} plot: no finished run has {metric}")

    curves, problems = load_curves(runs)
    skipped += problems
    for name in curve_metrics:
        target = out / plot_filename(name)
        if plot_training_curves(comparison.rows, comparison.by, name, curves, target):
            notes.append(f"plot: {target}")
        else:
            notes.append(f"no curve plot for {name}: no run logged it in metrics.csv")

    comparison = replace(comparison, notes=tuple(notes), skipped=tuple(skipped))
    for fmt, filename in OUTPUT_FILES.items():
        (out / filename).write_text(render(comparison, fmt), encoding="utf-8")
    return comparison
