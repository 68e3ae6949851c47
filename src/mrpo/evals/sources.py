"""Where an evaluation task's data and metric come from, and the readers its folder shares.

A task's loader reads the original release files from a local data folder (``data_dir`` or
``$MRPO_DATA_DIR``) that holds them, else the hub, into the same frozen records either way. Its
metric is an ``evaluate`` script in its folder, ``metric.py`` (the hub's cannot be fetched offline).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import evaluate

EVALS_DIR = Path(__file__).resolve().parent
METRIC_FILE = "metric.py"


def require_str(row: Mapping[str, Any], field: str, where: str) -> str:
    """``row[field]``, which must be a non-empty string (else ``ValueError`` naming ``where``)."""
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {field!r} must be a non-empty string")
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one a line (blank lines skipped)."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} is not valid JSON: {e.msg}") from None
    return rows


def load_hub(hub_id: str, config: str, split: str) -> Any:
    """``datasets.load_dataset(hub_id, config, split=split)``."""
    # Imported here: `datasets` is slow to import and only this path needs it.
    import datasets

    return datasets.load_dataset(hub_id, config, split=split)


def load_metric(name: str, config_name: str | None = None) -> evaluate.EvaluationModule:
    """``evaluate.load`` the metric script of the task folder ``name`` (``gsm8k``, ...), kept in
    memory (no cache files written)."""
    path = EVALS_DIR / name / METRIC_FILE
    if not name.isidentifier() or not path.is_file():
        known = sorted(p.parent.name for p in EVALS_DIR.glob(f"*/{METRIC_FILE}"))
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(known)}")
    return evaluate.load(str(path), config_name, keep_in_memory=True)
