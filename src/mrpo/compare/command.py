"""``mrpo-compare``: compare finished runs offline, from their local records (:mod:`mrpo.compare`).

    mrpo-compare outputs/multirun/2026-11-23_10-00-00
    mrpo-compare RUN_OR_MULTIRUN ... --by loss.name references.num_refs --format markdown
    mrpo-compare outputs/multirun/* --out reports/num_refs --plot-x references.num_refs

    mrpo-compare outputs/multirun/num_refs_<date>_<time> --wandb ENTITY/PROJECT
    mrpo-compare --wandb my-team/mrpo --group num_refs_<date>_<time> --by references.num_refs
    mrpo-compare --publish-view reports/num_refs/wandb_view.json

The table goes to stdout in the chosen format. With ``--out DIR`` the table is also written
there in all three formats, with PNG plots (:mod:`mrpo.compare.outputs`). ``--wandb`` also
builds the sweep's W&B view (:mod:`mrpo.compare.wandb_sweep`): saved online, else its
specification written beside the local table (``--out``, else the sweep directory, else the
current directory) to publish later (:mod:`mrpo.compare.wandb_publish`).
Exit status: 0 on success, 1 when no finished run was found, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mrpo.compare import outputs, wandb_sweep
from mrpo.compare.records import collect_runs
from mrpo.compare.render import FORMATS, render
from mrpo.compare.table import Comparison, build_comparison


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
        help=f"config key on the x axis of the score plot (default: {outputs.DEFAULT_PLOT_X})",
    )
    parser.add_argument(
        "--plot-metric",
        metavar="M",
        help=f"score on the y axis of that plot (default: {outputs.DEFAULT_PLOT_METRIC})",
    )
    parser.add_argument(
        "--curve-metrics",
        nargs="+",
        metavar="M",
        default=list(outputs.DEFAULT_CURVE_METRICS),
        help="metrics.csv columns drawn over steps (default: "
        f"{' '.join(outputs.DEFAULT_CURVE_METRICS)})",
    )
    _add_wandb_arguments(parser)
    return parser


def _add_wandb_arguments(parser: argparse.ArgumentParser) -> None:
    """The W&B options of ``mrpo-compare``."""
    group = parser.add_argument_group("W&B view (needs pip install 'mrpo[wandb-views]')")
    group.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT",
        help="build a W&B workspace view and report of the sweep: saved online, else written "
        "as a specification to publish later",
    )
    group.add_argument(
        "--group",
        metavar="NAME",
        help="the sweep's W&B group (default: read from the sweep directory)",
    )
    group.add_argument(
        "--publish-view",
        type=Path,
        metavar="FILE",
        help="save a view specification written offline earlier",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``mrpo-compare``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.publish_view is not None:
            wandb_sweep.check_installed("--publish-view")
            _print_lines(wandb_sweep.publish_saved(args.publish_view), args.format)
            return 0
        _check_wandb_options(args)
        collection = collect_runs(args.paths)
        comparison = build_comparison(collection, by=args.by, metrics=args.metrics)
        outputs.check_plot_options(comparison, args.plot_x, args.plot_metric)
        if args.out is not None and args.paths:  # --group alone has no local table
            comparison = outputs.write_outputs(
                comparison, args.out, args.plot_x, args.plot_metric, args.curve_metrics
            )
        view = []
        if args.wandb is not None:
            spec = wandb_sweep.view_spec(args.wandb, collection, args.paths, args.group, args.by)
            view = wandb_sweep.save_or_write(spec, _spec_dir(args))
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
        wandb_sweep.check_installed("--wandb")  # before reading any run
        wandb_sweep.parse_target(args.wandb)
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
