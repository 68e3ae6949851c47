"""Evaluation data sets: GSM8K and TruthfulQA multiple choice, from the hub or local files.

Each loader reads either the Hugging Face hub copy (the normal path for users) or the original
release files under a local data folder (``data_dir`` or the ``MRPO_DATA_DIR`` environment
variable), and normalizes both to the same frozen records. A local folder is used when one is
given or named by the environment and holds the file; otherwise the hub is asked.

Local layout (the original releases)::

    <data_dir>/gsm8k/train.jsonl, <data_dir>/gsm8k/test.jsonl   {"question", "answer"} per line
    <data_dir>/truthfulqa/mc_task.json    [{"question", "mc1_targets": {text: 0|1}, ...}, ...]

The hub's ``truthfulqa/truthful_qa`` (config ``multiple_choice``) was built from ``mc_task.json``
with ``choices = list(targets.keys())`` and ``labels = list(targets.values())``, so the JSON
object order *is* the hub's choice order; both formats therefore give identical records.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrpo.data.sources import data_root

GSM8K_HUB_ID = "openai/gsm8k"
GSM8K_HUB_CONFIG = "main"
TRUTHFULQA_HUB_ID = "truthfulqa/truthful_qa"
TRUTHFULQA_HUB_CONFIG = "multiple_choice"
TRUTHFULQA_HUB_SPLIT = "validation"
GSM8K_SPLITS = ("train", "test")

# The gold answer is whatever follows the last "#### " marker, as lm-evaluation-harness strips
# "(?s).*#### " from the reference before comparing.
_GOLD_MARKER = re.compile(r"(?s).*#### ")


@dataclass(frozen=True)
class GSM8KRecord:
    """One GSM8K problem.

    Attributes:
        question: the problem text.
        answer: the full reference solution, ending in ``"#### <number>"``.
        gold: the text after the last ``"#### "`` (e.g. ``"1,000"``), checked to parse as a number.
        index: row number in its split.
    """

    question: str
    answer: str
    gold: str
    index: int


@dataclass(frozen=True)
class TruthfulQARecord:
    """One TruthfulQA multiple-choice question, choices in the release order.

    Attributes:
        question: the question text.
        mc1_choices: answer options of the single-true task; exactly one label is 1.
        mc1_labels: 0/1 per ``mc1_choices`` entry.
        mc2_choices: answer options of the multi-true task.
        mc2_labels: 0/1 per ``mc2_choices`` entry (at least one 1 and one 0).
        index: row number in the data set.
    """

    question: str
    mc1_choices: tuple[str, ...]
    mc1_labels: tuple[int, ...]
    mc2_choices: tuple[str, ...]
    mc2_labels: tuple[int, ...]
    index: int

    @property
    def mc1_gold(self) -> int:
        """Index of the one true MC1 choice."""
        return self.mc1_labels.index(1)


def parse_gsm8k_gold(answer: str, *, where: str) -> str:
    """Return the gold number text after the last ``"#### "`` of a GSM8K solution.

    Raises:
        ValueError: naming ``where`` when the marker is missing or the rest is not a number
            (commas and a leading ``$`` are allowed, as in ``"$1,000"``).
    """
    if "#### " not in answer:
        raise ValueError(f"{where}: answer has no '#### <number>' line: {answer[-80:]!r}")
    gold = _GOLD_MARKER.sub("", answer).strip()
    try:
        float(gold.replace(",", "").lstrip("$"))
    except ValueError:
        raise ValueError(f"{where}: gold answer after '#### ' is not a number: {gold!r}") from None
    return gold


def gsm8k_records(rows: Iterable[Mapping[str, Any]], *, source: str) -> list[GSM8KRecord]:
    """Normalize GSM8K rows (``question``, ``answer``); ``source`` names them in errors."""
    records = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i} (0-based)"
        question, answer = _require_str(row, "question", where), _require_str(row, "answer", where)
        gold = parse_gsm8k_gold(answer, where=where)
        records.append(GSM8KRecord(question=question, answer=answer, gold=gold, index=i))
    if not records:
        raise ValueError(f"{source}: no GSM8K rows")
    return records


def load_gsm8k(
    split: str = "test",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    hub_id: str = GSM8K_HUB_ID,
) -> list[GSM8KRecord]:
    """Load a GSM8K split (``"train"``: 7,473 rows, ``"test"``: 1,319 rows).

    Reads ``<data_dir>/gsm8k/<split>.jsonl`` when a data folder is given (or set in
    ``MRPO_DATA_DIR``) and holds it; otherwise ``datasets.load_dataset(hub_id, "main")``.

    Raises:
        ValueError: unknown split, or a row without a numeric ``#### `` answer (file and row named).
    """
    if split not in GSM8K_SPLITS:
        raise ValueError(f"GSM8K split must be one of {GSM8K_SPLITS}, got {split!r}")
    folder = data_root(data_dir)
    path = folder / "gsm8k" / f"{split}.jsonl" if folder is not None else None
    if path is not None and path.is_file():
        return gsm8k_records(_read_jsonl(path), source=str(path))
    if data_dir is not None:
        raise ValueError(f"GSM8K file not found: {path}")
    rows = _load_hub(hub_id, GSM8K_HUB_CONFIG, split)
    return gsm8k_records(rows, source=f"{hub_id}[{GSM8K_HUB_CONFIG}/{split}]")


def truthfulqa_records(rows: Iterable[Mapping[str, Any]], *, source: str) -> list[TruthfulQARecord]:
    """Normalize TruthfulQA MC rows, hub (``{choices, labels}``) or original (``{text: 0|1}``).

    Raises:
        ValueError: naming ``source`` and the row, when targets are malformed, MC1 does not have
            exactly one true choice, or MC2 lacks a true or a false choice.
    """
    records = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i} (0-based)"
        question = _require_str(row, "question", where)
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
    rows = _load_hub(hub_id, TRUTHFULQA_HUB_CONFIG, TRUTHFULQA_HUB_SPLIT)
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


def _require_str(row: Mapping[str, Any], field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {field!r} must be a non-empty string")
    return value


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
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


def _load_hub(hub_id: str, config: str, split: str) -> Any:
    # Imported here: `datasets` is slow to import and only this path needs it.
    import datasets

    return datasets.load_dataset(hub_id, config, split=split)
