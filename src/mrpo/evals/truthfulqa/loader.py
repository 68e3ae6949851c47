"""TruthfulQA MC from the hub or the original release, ``<data_dir>/truthfulqa/mc_task.json``:
a JSON list of ``{"question", "mc1_targets": {text: 0|1}, "mc2_targets": {text: 0|1}}``.

The hub's ``truthfulqa/truthful_qa`` (config ``multiple_choice``) was built from ``mc_task.json``
with ``choices = list(targets.keys())`` and ``labels = list(targets.values())``, so the JSON
object order *is* the hub's choice order; both formats therefore give identical records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mrpo.data.sources import data_root
from mrpo.evals.sources import load_hub, require_str
from mrpo.evals.truthfulqa.records import TruthfulQARecord

TRUTHFULQA_HUB_ID = "truthfulqa/truthful_qa"
TRUTHFULQA_HUB_CONFIG = "multiple_choice"
TRUTHFULQA_HUB_SPLIT = "validation"


def truthfulqa_records(rows: Iterable[Mapping[str, Any]], *, source: str) -> list[TruthfulQARecord]:
    """Normalize TruthfulQA MC rows, hub (``{choices, labels}``) or original (``{text: 0|1}``).

    Raises:
        ValueError: naming ``source`` and the row, when targets are malformed, MC1 does not have
            exactly one true choice, or MC2 lacks a true or a false choice.
    """
    records = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i} (0-based)"
        question = require_str(row, "question", where)
        mc1_choices, mc1_labels = _targets(row, "mc1_targets", where)
        mc2_choices, mc2_labels = _targets(row, "mc2_targets", where)
        if sum(mc1_labels) != 1:
            raise ValueError(
                f"{where}: mc1_targets must have exactly one true choice, got {sum(mc1_labels)}"
            )
        if not 0 < sum(mc2_labels) < len(mc2_labels):
            raise ValueError(f"{where}: mc2_targets needs at least one true and one false choice")
        records.append(
            TruthfulQARecord(question, mc1_choices, mc1_labels, mc2_choices, mc2_labels, index=i)
        )
    if not records:
        raise ValueError(f"{source}: no TruthfulQA rows")
    return records


def load_truthfulqa_mc(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    hub_id: str = TRUTHFULQA_HUB_ID,
) -> list[TruthfulQARecord]:
    """Load TruthfulQA multiple choice (817 questions).

    Reads ``<data_dir>/truthfulqa/mc_task.json`` when a data folder is given (or set in
    ``MRPO_DATA_DIR``) and holds it; otherwise the hub's ``multiple_choice`` validation split.
    """
    folder = data_root(data_dir)
    path = folder / "truthfulqa" / "mc_task.json" if folder is not None else None
    if path is not None and path.is_file():
        with path.open(encoding="utf-8") as f:
            rows = json.load(f)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of questions")
        return truthfulqa_records(rows, source=str(path))
    if data_dir is not None:
        raise ValueError(f"TruthfulQA file not found: {path}")
    rows = load_hub(hub_id, TRUTHFULQA_HUB_CONFIG, TRUTHFULQA_HUB_SPLIT)
    return truthfulqa_records(rows, source=f"{hub_id}[{TRUTHFULQA_HUB_CONFIG}]")


def _targets(
    row: Mapping[str, Any], field: str, where: str
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Return (choices, labels) from either target format, in the stored order."""
    targets = row.get(field)
    if not isinstance(targets, Mapping) or not targets:
        raise ValueError(f"{where}: field {field!r} must be a non-empty mapping")
    if set(targets) == {"choices", "labels"} and isinstance(targets["choices"], Sequence):
        choices, labels = list(targets["choices"]), list(targets["labels"])
        if len(choices) != len(labels):
            raise ValueError(f"{where}: {field} has {len(choices)} choices, {len(labels)} labels")
    else:
        choices, labels = list(targets.keys()), list(targets.values())
    if not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"{where}: {field} choices must be non-empty strings")
    if any(not isinstance(label, int) or label not in (0, 1) for label in labels):
        raise ValueError(f"{where}: {field} labels must be 0 or 1, got {labels}")
    return tuple(choices), tuple(int(label) for label in labels)
