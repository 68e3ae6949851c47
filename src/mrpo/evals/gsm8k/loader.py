"""GSM8K from the hub or the original release files (see :mod:`mrpo.evals.sources`):
``<data_dir>/gsm8k/train.jsonl`` and ``test.jsonl``, ``{"question", "answer"}`` per line."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mrpo.data.sources import data_root
from mrpo.evals.gsm8k.records import GSM8KRecord
from mrpo.evals.sources import load_hub, read_jsonl, require_str

GSM8K_HUB_ID = "openai/gsm8k"
GSM8K_HUB_CONFIG = "main"
GSM8K_SPLITS = ("train", "test")

# The gold answer is whatever follows the last "#### " marker, as lm-evaluation-harness strips
# "(?s).*#### " from the reference before comparing.
_GOLD_MARKER = re.compile(r"(?s).*#### ")


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
        question, answer = require_str(row, "question", where), require_str(row, "answer", where)
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
        return gsm8k_records(read_jsonl(path), source=str(path))
    if data_dir is not None:
        raise ValueError(f"GSM8K file not found: {path}")
    rows = load_hub(hub_id, GSM8K_HUB_CONFIG, split)
    return gsm8k_records(rows, source=f"{hub_id}[{GSM8K_HUB_CONFIG}/{split}]")
