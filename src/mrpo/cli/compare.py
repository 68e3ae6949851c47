"""``mrpo-compare``: compare finished runs offline, from their local records (:mod:`mrpo.compare`).

    mrpo-compare outputs/multirun/2026-11-23_10-00-00
    mrpo-compare RUN_OR_MULTIRUN ... --by loss.name references.num_refs --format markdown
    mrpo-compare outputs/multirun/* --out reports/num_refs --plot-x references.num_refs

    mrpo-compare outputs/multirun/num_refs_<date>_<time> --wandb ENTITY/PROJECT

The table goes to stdout in the chosen format. With ``--out DIR`` the table is also written
there in all three formats (compare.txt, compare.md, compare.csv), with PNG plots: the plot
metric against ``--plot-x`` (when it takes more than one value) and training curves per
configuration. ``--wandb`` also builds the sweep's W&B view (:mod:`mrpo.cli.compare_wandb`).
Exit status: 0 on success, 1 when no finished run was found, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mrpo.cli import compare_wandb
from mrpo.compare.plots import (
    load_curves,
    plot_filename,
    plot_metric_vs,
    plot_training_curves,
)
from mrpo.compare.records import collect_runs
from mrpo.compare.render import FORMATS, render
from mrpo.compare.table import Comparison, build_comparison

DEFAULT_PLOT_X = "references.num_refs"
DEFAULT_PLOT_METRIC = "final/val/policy_margin_accuracy"
DEFAULT_CURVE_METRICS = ("train/loss", "val/policy_margin_accuracy")
OUTPUT_FILES = {"text": "compare.txt", "markdown": "compare.md", "csv": "compare.csv"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrpo-compare",
        description="Compare mrpo-train runs: a table of final scores (mean ± std over seeds "
        "per configuration) and plots, from the run directories' local records.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="run or multirun directories")
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="M",
        help="summary.json keys to show (default: final/val/rewards/{accuracy,margin}, "
        "final/val/policy_margin_accuracy and every final/eval/* present)",
    )
    parser.add_argument(
        "--by",
        nargs="+",
        metavar="KEY",
        help="config keys that define a configuration (default: the meaningful keys whose "
        "value differs between runs; seeds are always averaged)",
    )
    parser.add_argument("--format", choices=FORMATS, default="text", help="stdout format")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write compare.{txt,md,csv} and PNG plots here"
    )
    parser.add_argument(
        "--plot-x",
        metavar="KEY",
        help=f"config key on the x axis of the score plot (default: {DEFAULT_PLOT_X})",
    )
    parser.add_argument(
        "--plot-metric",
        metavar="M",
        help=f"score on the y axis of that plot (default: {DEFAULT_PLOT_METRIC})",
    )
    parser.add_argument(
        "--curve-metrics",
        nargs="+",
        metavar="M",
        default=list(DEFAULT_CURVE_METRICS),
        help=f"metrics.csv columns drawn over steps (default: {' '.join(DEFAULT_CURVE_METRICS)})",
    )
    compare_wandb.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``mrpo-compare``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.publish_view is not None:
            compare_wandb.check_installed("--publish-view")
            _print_lines(compare_wandb.publish_saved(args.publish_view), args.format)
            return 0
        _check_wandb_options(args)
        collection = collect_runs(args.paths)
        comparison = build_comparison(collection, by=args.by, metrics=args.metrics)
        _check_plot_options(comparison, args.plot_x, args.plot_metric)
        if args.out is not None and args.paths:  # --group alone has no local table
            comparison = _write_outputs(comparison, args)
        view = []
        if args.wandb is not None:
            spec = compare_wandb.view_spec(args, collection)
            view = compare_wandb.save_or_write(spec, _spec_dir(args))
    except ValueError as err:
        print(f"mrpo-compare: error: {err}", file=sys.stderr)
        return 2
    if args.paths:
        _print_table(comparison, args.format)
    _print_lines(view, args.format)
    return 0 if comparison.rows or not args.paths else 1


def _check_wandb_options(args: argparse.Namespace) -> None:
    if args.wandb is None and args.group is not None:
        raise ValueError("--group names the W&B group of --wandb ENTITY/PROJECT")
    if args.wandb is not None:
        compare_wandb.check_installed("--wandb")  # before reading any run
        compare_wandb.parse_target(args.wandb)
        if not args.paths and args.group is None:
            raise ValueError("--wandb: give a sweep directory or --group NAME")
    elif not args.paths:
        raise ValueError("give run or multirun directories to compare")


def _spec_dir(args: argparse.Namespace) -> Path:
    """Where an offline view specification goes: beside the local table."""
    if args.out is not None:
        return Path(args.out)
    return Path(args.paths[0]) if args.paths else Path.cwd()


def _print_table(comparison: Comparison, fmt: str) -> None:
    sys.stdout.write(render(comparison, fmt))
    if fmt == "csv":  # stdout stays pure CSV; what text and markdown append goes here
        for note in comparison.notes:
            print(f"note: {note}", file=sys.stderr)
        for skipped in comparison.skipped:
            print(f"skipped: {skipped.describe()}", file=sys.stderr)


def _print_lines(lines: Sequence[str], fmt: str) -> None:
    for line in lines:
        print(line, file=sys.stderr if fmt == "csv" else sys.stdout)


def _check_plot_options(comparison: Comparison, plot_x: str | None, metric: str | None) -> None:
    """Explicit plot options must name a key and a score that some finished run has."""
    runs = [run for row in comparison.rows for run in row.runs]
    if plot_x is not None and runs and not any(plot_x in r.config for r in runs):
        raise ValueError(f"--plot-x: no finished run has config key {plot_x!r}")
    if metric is not None and runs and not any(metric in r.scores for r in runs):
        raise ValueError(f"--plot-metric: no finished run has {metric!r} in summary.json")


def _write_outputs(comparison: Comparison, args: argparse.Namespace) -> Comparison:
    """Write the three tables and the plots; return the comparison with plot notes added."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    notes = list(comparison.notes)
    skipped = list(comparison.skipped)
    runs = [run for row in comparison.rows for run in row.runs]

    x_key = args.plot_x or DEFAULT_PLOT_X
    metric = args.plot_metric or DEFAULT_PLOT_METRIC
    if len({r.config.get(x_key) for r in runs}) < 2:
        notes.append(f"no {metric} vs {x_key} plot: {x_key} takes fewer than two values")
    elif plot_metric_vs(runs, comparison.by, metric, x_key, out / plot_filename(metric, x_key)):
        notes.append(f"plot: {out / plot_filename(metric, x_key)}")
    else:
        notes.append(f"no {metric} vs {x_key} plot: no finished run has {metric}")

    curves, problems = load_curves(runs)
    skipped += problems
    for name in args.curve_metrics:
        target = out / plot_filename(name)
        if plot_training_curves(comparison.rows, comparison.by, name, curves, target):
            notes.append(f"plot: {target}")
        else:
            notes.append(f"no curve plot for {name}: no run logged it in metrics.csv")

    comparison = replace(comparison, notes=tuple(notes), skipped=tuple(skipped))
    for fmt, filename in OUTPUT_FILES.items():
        (out / filename).write_text(render(comparison, fmt), encoding="utf-8")
    return comparison
