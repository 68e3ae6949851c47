"""A sweep's W&B view for ``mrpo-compare --wandb`` (built by :mod:`mrpo.compare.wandb_view`).

A sweep directory gives the W&B group (its ``logger.group``, else the directory's name, as
``mrpo-train`` names it) and the swept keys (its ``multirun.yaml``); ``group`` and ``by`` name
them instead. Online (an API key, W&B reachable) the view is saved as a workspace view and a
report and their URLs printed. Otherwise its specification is written as JSON in a given
directory under a name not yet taken, never over an earlier file, with the command that
publishes it later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mrpo.compare.multirun import swept_keys
from mrpo.compare.records import MULTIRUN_FILE, RunCollection, RunRecord, read_yaml_mapping
from mrpo.compare.table import PER_RUN_KEYS
from mrpo.compare.wandb_view import WORKSPACE_EXTRA, ViewSpec, publish
from mrpo.tracking.backends import module_available
from mrpo.tracking.mode import resolve_wandb_mode

SPEC_STEM = "wandb_view"


def check_installed(option: str) -> None:
    """Refuse ``option`` when ``wandb_workspaces`` is not installed (before any work)."""
    if not module_available("wandb_workspaces"):
        raise ValueError(
            f"{option} needs the 'wandb-workspaces' package, which is not installed: "
            f"pip install 'mrpo[{WORKSPACE_EXTRA}]'"
        )


def parse_target(value: str) -> tuple[str, str]:
    """``ENTITY/PROJECT`` as its two parts; ``ValueError`` for anything else."""
    entity, sep, project = value.partition("/")
    if not (sep and entity and project) or "/" in project:
        raise ValueError(f"--wandb: expected ENTITY/PROJECT, got {value!r}")
    return entity, project


def view_spec(
    target: str,
    collection: RunCollection,
    paths: Sequence[str],
    group: str | None = None,
    by: Sequence[str] | None = None,
) -> ViewSpec:
    """The view in W&B project ``target`` (``ENTITY/PROJECT``) of the sweep named by ``group``
    or ``paths``, grouped by ``by`` or the sweep's swept keys."""
    entity, project = parse_target(target)
    notes: list[str] = []
    group = group or _sweep_group(paths, collection.runs)
    if by is None:
        swept = [k for p in paths for k in _swept_keys(Path(p))]
        by = _config_keys(swept, collection.runs, notes)
        if not paths:
            notes.append("no sweep directory given: runs not grouped (name the keys with --by)")
    refs = [r.config.get("references.num_refs") for r in collection.runs]
    num_refs = max((int(k) for k in refs if isinstance(k, int)), default=None)
    return ViewSpec(entity, project, group, tuple(by), num_refs, tuple(notes))


def _sweep_group(paths: Sequence[str], runs: Sequence[RunRecord]) -> str:
    """The W&B group ``mrpo-train`` gave the runs: ``logger.group``, else the name of the
    multirun directory they are in."""
    groups = {str(r.config.get("logger.group") or _multirun_name(r.path)) for r in runs}
    if not runs:
        groups = {Path(p).resolve().name for p in paths if (Path(p) / MULTIRUN_FILE).is_file()}
    if len(groups) != 1 or "" in groups:
        found = ", ".join(sorted(g or "(not a sweep)" for g in groups)) or "none"
        raise ValueError(f"--wandb: give one sweep directory or --group (W&B groups: {found})")
    return groups.pop()


def _multirun_name(run_dir: Path) -> str:
    parent = run_dir.resolve().parent
    return parent.name if (parent / MULTIRUN_FILE).is_file() else ""


def _swept_keys(path: Path) -> list[str]:
    if not (path / MULTIRUN_FILE).is_file():
        return []
    return swept_keys(read_yaml_mapping(path / MULTIRUN_FILE))


def _config_keys(swept: Sequence[str], runs: Sequence[RunRecord], notes: list[str]) -> list[str]:
    """The runs' config keys for the swept keys: seeds are averaged, not grouped by; a swept
    config group (``loss=dpo,mrpo``) is grouped by its ``name``."""
    present = set().union(*(r.config for r in runs))
    keys: list[str] = []
    for key in dict.fromkeys(swept):
        if key in PER_RUN_KEYS:
            continue
        if not runs or key in present:
            keys.append(key)
        elif f"{key}.name" in present:
            keys.append(f"{key}.name")
        else:
            notes.append(f"swept key {key} is not in the runs' config: not grouped by it")
    return keys


def write_spec(spec: ViewSpec, directory: Path) -> Path:
    """Write ``spec`` as ``wandb_view.json`` in ``directory``, or ``wandb_view_<n>.json``
    when that name is taken: an earlier specification is never overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        path = directory / (f"{SPEC_STEM}.json" if n == 0 else f"{SPEC_STEM}_{n}.json")
        try:
            with path.open("x", encoding="utf-8") as handle:  # "x": fails if the file exists
                handle.write(spec.to_json())
            return path
        except FileExistsError:
            continue
    raise ValueError(f"{directory}: no free {SPEC_STEM}_<n>.json name")


def read_spec(path: Path) -> ViewSpec:
    """A specification written by :func:`write_spec`; ``ValueError`` names the file."""
    try:
        return ViewSpec.from_mapping(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, ValueError, AttributeError) as err:
        raise ValueError(f"--publish-view {path}: {err}") from None


def save_or_write(spec: ViewSpec, directory: Path) -> list[str]:
    """Save the view online when W&B can be reached; otherwise write its specification.
    Returns the lines to print: the URLs, or where the specification is and how to publish."""
    lines = [f"W&B view of group {spec.group}: {n}" for n in spec.notes]
    if resolve_wandb_mode("auto") == "online":
        try:
            workspace_url, report_url = publish(spec)
            return [*lines, f"W&B workspace view: {workspace_url}", f"W&B report: {report_url}"]
        except Exception as err:  # network, auth and service errors all mean: write it offline
            reason = f"W&B could not be reached ({type(err).__name__}: {err})"
    else:
        reason = "W&B is offline here (WANDB_MODE=offline, or no API key)"
    path = write_spec(spec, directory)
    return [
        *lines,
        f"{reason}: the view was not saved; its specification is in {path}",
        f"publish it later (online): mrpo-compare --publish-view {path}",
    ]


def publish_saved(path: Path) -> list[str]:
    """``--publish-view FILE``: save a specification written offline; the URLs to print."""
    spec = read_spec(path)
    if resolve_wandb_mode("auto") != "online":
        raise ValueError(
            f"--publish-view {path}: W&B is offline here (WANDB_MODE=offline, or no API key); "
            "set WANDB_API_KEY (or run wandb login) and try again"
        )
    try:
        workspace_url, report_url = publish(spec)
    except Exception as err:  # network, auth or service: the file stays for another try
        raise ValueError(
            f"--publish-view {path}: W&B refused or could not be reached: {err}"
        ) from None
    return [f"W&B workspace view: {workspace_url}", f"W&B report: {report_url}"]
