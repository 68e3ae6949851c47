"""Group runs into configurations and aggregate their final scores over seeds.

A *configuration* is a set of runs that agree on the grouping keys; runs in it differ by seed.
Each score is summarized as mean ± sample standard deviation (ddof=1) with the number of runs
that reported it. The standard deviation of a single run is undefined: it is ``None`` here and
shown blank. A NaN score (a diverged run) is kept, so it makes its row's mean NaN instead of
silently disappearing.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from mrpo.compare.records import RunCollection, RunRecord, Scalar, SkippedRun

# Config keys that define an experimental condition; the ones whose values differ between the
# runs become the grouping keys (unless the user names them with --by).
GROUP_KEYS: tuple[str, ...] = (
    "loss.name",
    "loss.loss_type",
    "loss.loss_weights",
    "loss.aggregation",
    "loss.f_divergence_type",
    "references.num_refs",
    "references.select",
    "references.pool",
    "weights.strategy",
    "weights.fixed_weights",
    "loss.beta",
    "loss.label_smoothing",
    "loss.ctro",
    "loss.epsilon",
    "loss.adaptive_epsilon",
    "loss.harmonic_pairing",
    "loss.length_normalize",
    "optimizer.lr",
    "scheduler.name",
    "model.source",
    "model.lora.enabled",
    "data.source",
    "data.subset",
    "data.max_samples",
    "trainer.max_steps",
    "trainer.max_epochs",
)
DEFAULT_METRICS: tuple[str, ...] = (
    "final/val/rewards/accuracy",
    "final/val/rewards/margin",
    "final/val/policy_margin_accuracy",
)
# Keys expected to differ between the seeds of one configuration (never reported as pooled).
PER_RUN_KEYS = frozenset({"seed", "weights.seed", "ckpt_path"})
_PER_RUN_PREFIXES = ("paths.", "logger.", "hydra.")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``None`` for a single value) of ``n`` values."""

    mean: float | None
    std: float | None
    n: int


@dataclass(frozen=True)
class GroupRow:
    """One configuration: its grouping-key values, its runs and a :class:`Stat` per metric."""

    values: tuple[Scalar, ...]
    runs: tuple[RunRecord, ...]
    stats: dict[str, Stat]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> tuple[Scalar, ...]:
        return tuple(sorted((r.seed for r in self.runs), key=sort_key))


@dataclass(frozen=True)
class Comparison:
    """The comparison table plus everything a reader must know to trust it."""

    by: tuple[str, ...]
    metrics: tuple[str, ...]
    rows: tuple[GroupRow, ...]
    skipped: tuple[SkippedRun, ...]
    notes: tuple[str, ...]


def summarize(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation (ddof=1) of ``values``."""
    n = len(values)
    if n == 0:
        return Stat(None, None, 0)
    mean = math.fsum(values) / n
    if n == 1:
        return Stat(mean, None, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Stat(mean, math.sqrt(var), n)


def varying_keys(runs: Sequence[RunRecord], candidates: Sequence[str] = GROUP_KEYS) -> list[str]:
    """The candidate keys whose value is not the same in every run, in candidate order."""
    return [k for k in candidates if len({_hashable(r.config.get(k)) for r in runs}) > 1]


def default_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The standard final validation scores plus every ``final/eval/*`` score, where present."""
    present = set().union(*(r.scores for r in runs))
    evals = sorted(k for k in present if k.startswith("final/eval/"))
    return [m for m in DEFAULT_METRICS if m in present] + evals


def aggregate(
    runs: Sequence[RunRecord], by: Sequence[str], metrics: Sequence[str]
) -> list[GroupRow]:
    """Group ``runs`` by the values of ``by`` and summarize each metric; rows sorted by value."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        key = tuple(_hashable(run.config.get(k)) for k in by)
        groups.setdefault(key, []).append(run)
    rows = []
    for members in groups.values():
        stats = {m: summarize([r.scores[m] for r in members if m in r.scores]) for m in metrics}
        values = tuple(members[0].config.get(k) for k in by)
        rows.append(GroupRow(values=values, runs=tuple(members), stats=stats))
    return sorted(rows, key=lambda row: tuple(sort_key(v) for v in row.values))


def build_comparison(
    collection: RunCollection,
    by: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """Group, aggregate and annotate the runs of ``collection``.

    ``by`` defaults to the varying :data:`GROUP_KEYS`; ``metrics`` to :func:`default_metrics`.
    A key or metric that no run has raises ``ValueError`` naming it and the closest names.
    """
    runs = collection.runs
    if by is not None and runs:  # with no finished run there is nothing to check against
        _check_names("--by", by, set().union(*(r.config for r in runs)))
    if metrics is not None and runs:
        _check_names("--metrics", metrics, set().union(*(r.scores for r in runs)))
    keys = tuple(varying_keys(runs) if by is None else by)
    chosen = tuple(default_metrics(runs) if metrics is None else metrics)
    rows = tuple(aggregate(runs, keys, chosen))
    return Comparison(
        by=keys,
        metrics=chosen,
        rows=rows,
        skipped=tuple(collection.skipped),
        notes=tuple(_notes(rows, keys)),
    )


def sort_key(value: Scalar) -> tuple[int, float, str]:
    """Order mixed config values: numbers numerically, then strings, then missing values."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _hashable(value: Scalar) -> tuple[str, Scalar]:
    # 1 and 1.0 (or True) must not merge into one group when a config spells them differently
    # across runs, so the type is part of the identity.
    return (type(value).__name__, value)


def _check_names(option: str, names: Sequence[str], available: set[str]) -> None:
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, sorted(available), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"{option}: no finished run has {name!r}{hint}")


def _notes(rows: Sequence[GroupRow], by: Sequence[str]) -> list[str]:
    """Warnings about rows that may pool unlike runs or count one seed twice."""
    pooled: set[str] = set()
    notes = []
    for row in rows:
        keys = set().union(*(r.config for r in row.runs)) - set(by) - PER_RUN_KEYS
        pooled |= {
            k
            for k in keys
            if not k.startswith(_PER_RUN_PREFIXES)
            and len({_hashable(r.config.get(k)) for r in row.runs}) > 1
        }
        seeds = [r.seed for r in row.runs]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=sort_key)
        if repeated:
            label = ", ".join(f"{k}={v}" for k, v in zip(by, row.values, strict=True)) or "all"
            notes.append(f"configuration {label} has repeated seeds: {repeated}")
    if pooled:
        notes.insert(
            0,
            "runs averaged in one row also differ in: "
            f"{', '.join(sorted(pooled))} (name them with --by to separate)",
        )
    return notes
