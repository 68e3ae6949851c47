"""Read the local run records that ``mrpo-train`` writes (no W&B needed).

A run directory holds ``config.yaml`` (the resolved config), ``csv/attempt_<n>/metrics.csv``
(metrics over steps, Lightning's ``CSVLogger``, one folder per attempt) and, once the run
has finished, ``summary.json`` (final scores). A Hydra multirun directory holds
``multirun.yaml`` and one numbered run directory per job. Runs that cannot be compared
(crashed, unfinished, missing, unreadable) are returned as :class:`SkippedRun` entries with a
reason, never raised: one bad job must not hide the others.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mrpo.compare.multirun import sweep_job_overrides
from mrpo.tracking.record import CONFIG_FILE, FAILED, SUMMARY_FILE, metrics_files

METRICS_FILE = Path("csv") / "attempt_<n>" / "metrics.csv"
MULTIRUN_FILE = "multirun.yaml"
HYDRA_OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"

Scalar = str | int | float | bool | None


class RunRecordError(ValueError):
    """A run record that exists but cannot be read; the message names the file."""


@dataclass(frozen=True)
class RunRecord:
    """One finished run.

    ``config`` is the resolved config flattened to dotted keys (``loss.name``); lists of
    scalars become comma-joined strings, and two keys are derived so runs compare by what they
    used: ``references.num_refs`` is K (the pool size when the config says null) and
    ``references.pool`` is the comma-joined names of the pool. ``scores`` holds the numeric
    top-level values of ``summary.json`` (``final/...``, ``before/...``, ``seconds``, ...).
    """

    path: Path
    config: dict[str, Scalar]
    scores: dict[str, float]

    @property
    def seed(self) -> Scalar:
        return self.config.get("seed")


@dataclass(frozen=True)
class SkippedRun:
    """A run that was found (or expected) but cannot be compared, and why."""

    path: Path
    reason: str
    overrides: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for reports: path, reason and, when known, the job's sweep overrides."""
        suffix = f"  [{' '.join(self.overrides)}]" if self.overrides else ""
        return f"{self.path}: {self.reason}{suffix}"


@dataclass
class RunCollection:
    """Everything found under the paths given to ``mrpo-compare``."""

    runs: list[RunRecord] = field(default_factory=list)
    skipped: list[SkippedRun] = field(default_factory=list)


def collect_runs(paths: Sequence[str | Path]) -> RunCollection:
    """Find the runs under ``paths``: run directories or multirun directories.

    A multirun directory is searched one level deep (its numbered job directories). A job
    number missing from the sequence, or beyond the last one when ``multirun.yaml`` tells how
    many jobs the sweep has, is reported as missing. A path that is neither kind of directory
    raises ``ValueError``: that is a typing mistake, not a failed run.
    """
    found = RunCollection()
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ValueError(f"{path}: no such directory")
        if _is_run_dir(path):
            candidates: Iterable[tuple[Path, tuple[str, ...]]] = [(path, ())]
        elif _is_multirun_dir(path):
            candidates = _multirun_jobs(path, found.skipped)
        else:
            raise ValueError(
                f"{path}: neither a run directory (no {CONFIG_FILE} or {SUMMARY_FILE}) nor a "
                f"multirun directory (no {MULTIRUN_FILE} or numbered job directories)"
            )
        for run_dir, overrides in candidates:
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            result = load_run(run_dir, overrides)
            if isinstance(result, RunRecord):
                found.runs.append(result)
            else:
                found.skipped.append(result)
    return found


def load_run(path: Path, overrides: Sequence[str] = ()) -> RunRecord | SkippedRun:
    """Read one run directory; a run that cannot be compared comes back as :class:`SkippedRun`."""
    overrides = tuple(overrides) or _job_overrides(path)
    if not path.is_dir():
        return SkippedRun(path, "missing: no job directory", overrides)
    if not (path / SUMMARY_FILE).is_file():
        if not (path / CONFIG_FILE).is_file():
            return SkippedRun(path, f"failed before training: no {CONFIG_FILE}", overrides)
        return SkippedRun(
            path, f"crashed or unfinished: no {SUMMARY_FILE} (config.yaml present)", overrides
        )
    try:
        summary = _read_json_object(path / SUMMARY_FILE)
    except RunRecordError as err:
        return SkippedRun(path, str(err), overrides)
    if summary.get("status") == FAILED:  # a job can fail before it writes its config
        failure = summary.get("failure") or {}
        reason = f"failed ({failure.get('kind', 'unknown')}): {failure.get('message', '')}"
        return SkippedRun(path, reason, overrides)
    if not (path / CONFIG_FILE).is_file():
        reason = f"{SUMMARY_FILE} without {CONFIG_FILE}: configuration unknown"
        return SkippedRun(path, reason, overrides)
    try:
        config = flatten_config(read_yaml_mapping(path / CONFIG_FILE))
    except RunRecordError as err:
        return SkippedRun(path, str(err), overrides)
    if summary.get("stage") == "cache":
        return SkippedRun(path, "reference-cache job (stage=cache): no training scores", overrides)
    scores = {
        key: float(value)
        for key, value in summary.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return RunRecord(path=path, config=config, scores=scores)


def flatten_config(config: Mapping[str, Any]) -> dict[str, Scalar]:
    """Flatten a nested config to dotted keys, with the derived reference keys.

    Lists of scalars become comma-joined strings (so they can group runs); other lists and
    nested structures inside lists are dropped, except the reference pool, summarized by name.
    """
    flat: dict[str, Scalar] = {}
    _flatten_into(flat, "", config)
    refs = config.get("references")
    if isinstance(refs, Mapping) and isinstance(refs.get("pool"), list):
        pool = refs["pool"]
        names = [str(r.get("name", "?")) if isinstance(r, Mapping) else str(r) for r in pool]
        flat["references.pool"] = ",".join(names)
        num_refs = refs.get("num_refs")
        flat["references.num_refs"] = len(pool) if num_refs is None else num_refs
    return flat


def _flatten_into(flat: dict[str, Scalar], prefix: str, node: Mapping[str, Any]) -> None:
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten_into(flat, f"{name}.", value)
        elif isinstance(value, list):
            if all(not isinstance(v, Mapping | list) for v in value):
                flat[name] = ",".join(str(v) for v in value)
        else:
            flat[name] = value


def read_metrics(path: Path) -> dict[str, dict[int, float]]:
    """Read a run's metric files (one per attempt): ``{metric: {step: value}}``.

    Lightning writes one sparse row per logging call, so each metric takes its values from the
    rows where its cell is filled. When a metric appears twice at one step (validation after
    the last training step, or a step repeated by a resumed attempt), the later row wins.
    ``step`` and ``epoch`` are not metrics.
    """
    files = metrics_files(path)
    if not files:
        raise RunRecordError(f"{path / METRICS_FILE}: no such file")
    series: dict[str, dict[int, float]] = {}
    for file in files:
        _read_metrics_file(file, series)
    return series


def _read_metrics_file(file: Path, series: dict[str, dict[int, float]]) -> None:
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise RunRecordError(f"{file}: no 'step' column in the header")
        for row in reader:
            line = reader.line_num
            step = _parse_number(row.get("step"), file, line, "step")
            if step is None:
                continue
            for name, cell in row.items():
                if name in ("step", "epoch") or name is None:
                    continue
                value = _parse_number(cell, file, line, name)
                if value is not None:
                    series.setdefault(name, {})[int(step)] = value


def _parse_number(cell: Any, file: Path, line: int, column: str) -> float | None:
    if cell is None or (isinstance(cell, str) and cell.strip() == ""):
        return None
    try:
        value = float(cell)
    except (TypeError, ValueError):
        raise RunRecordError(
            f"{file}, line {line}, column {column!r}: {cell!r} is not a number"
        ) from None
    if column == "step" and not math.isfinite(value):
        raise RunRecordError(f"{file}, line {line}: step {cell!r} is not finite")
    return value


def _is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or (path / SUMMARY_FILE).is_file()


def _is_multirun_dir(path: Path) -> bool:
    return (path / MULTIRUN_FILE).is_file() or bool(_numbered_children(path))


def _numbered_children(path: Path) -> dict[int, Path]:
    return {int(p.name): p for p in path.iterdir() if p.is_dir() and p.name.isdigit()}


def _multirun_jobs(path: Path, skipped: list[SkippedRun]) -> list[tuple[Path, tuple[str, ...]]]:
    """Job directories of a multirun, in job order; an unreadable multirun.yaml is reported."""
    jobs = _numbered_children(path)
    planned: list[tuple[str, ...]] | None = None
    if (path / MULTIRUN_FILE).is_file():
        try:
            planned = sweep_job_overrides(read_yaml_mapping(path / MULTIRUN_FILE))
        except RunRecordError as err:
            skipped.append(SkippedRun(path, f"{err}; job count unknown"))
    last = max(jobs, default=-1)
    count = max(last + 1, len(planned) if planned else 0)
    result = []
    for num in range(count):
        overrides = planned[num] if planned and num < len(planned) else ()
        result.append((jobs.get(num, path / str(num)), overrides))
    return result


def _job_overrides(path: Path) -> tuple[str, ...]:
    """The job's own overrides as Hydra recorded them (``.hydra/overrides.yaml``), if any."""
    try:
        overrides = yaml.safe_load((path / HYDRA_OVERRIDES_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return ()
    return tuple(str(o) for o in overrides) if isinstance(overrides, list) else ()


def read_yaml_mapping(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RunRecordError(f"{file}: unreadable YAML ({err})") from None
    if not isinstance(data, dict):
        raise RunRecordError(f"{file}: expected a mapping at the top level")
    return data


def _read_json_object(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunRecordError(f"{file}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise RunRecordError(f"{file}: expected a JSON object at the top level")
    return data
