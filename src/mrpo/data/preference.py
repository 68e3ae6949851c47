"""Load preference pairs from a hub id, a local file or the data mirror, validated up front.

`load_preference_data` resolves the source (order documented in `mrpo.data.sources`), reads the raw
rows, detects the format from the fields (or takes the one named) and normalizes every row (the
format registry and its rules are in `mrpo.data.formats`). Rows that cannot be used are collected in
a `DropReport`; unless ``drop_invalid`` is set, any such row stops the load with a
`DataValidationError` naming the source, the reasons with their counts, and the row numbers --
before any model is loaded.

Row numbers in messages are 1-based line numbers for JSON Lines files and 1-based row numbers
otherwise. `PreferenceExample.index` is the 0-based position of the row among the source's rows
(blank lines excluded), so it stays the same whether or not other rows are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from mrpo.data.formats import FORMATS, detect_format, normalize_row
from mrpo.data.sources import RawRows, read_rows, resolve_source
from mrpo.data.splits import split_counts, split_rows
from mrpo.data.types import PreferenceExample
from mrpo.data.validation import DataValidationError, DropReport, InvalidRow, RowError

__all__ = [
    "DataValidationError",
    "DropReport",
    "PreferenceLoadResult",
    "load_preference_data",
    "train_val_split",
]


@dataclass
class PreferenceLoadResult:
    """The outcome of `load_preference_data`.

    Attributes:
        examples: the normalized pairs, in source order.
        dropped: the rows left out (empty unless ``drop_invalid=True``), with reasons.
        source: where the rows came from (resolved path, or hub id with subset and split).
        format: the `mrpo.data.formats.FORMATS` name the rows were read as.
    """

    examples: list[PreferenceExample]
    dropped: DropReport
    source: str
    format: str


def load_preference_data(
    source: str,
    *,
    split: str = "train",
    subset: str | None = None,
    data_dir: str | None = None,
    drop_invalid: bool = False,
    limit: int | None = None,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> PreferenceLoadResult:
    """Load and normalize preference pairs.

    Args:
        source: a hub id (``Anthropic/hh-rlhf``), a file (``.json``, ``.jsonl``, ``.jsonl.gz``,
            ``.json.gz``, ``.parquet``, ``.csv``), a local dataset folder, or a path relative to
            the data mirror (``hh-rlhf/harmless-base/test.jsonl.gz``). Resolution order: the
            path as given; the path under the mirror; for a hub id, the mirror file
            ``<name>/[<subset>/]<split><ext>``; then the hub (see `mrpo.data.sources`).
        split: the split to load (file name stem in the mirror layout).
        subset: a sub-folder of the data set (``harmless-base``), passed to
            ``datasets.load_dataset`` as ``data_dir``.
        data_dir: the data mirror folder; defaults to the environment variable ``MRPO_DATA_DIR``.
        drop_invalid: drop rows that cannot be normalized (and report them) instead of raising.
        limit: read at most this many rows of the source (before validation).
        format: a `mrpo.data.formats.FORMATS` name; None detects it from the fields.
        columns: source field -> the field name a format reads (``{"instruction": "prompt",
            "chosen_response": "chosen"}``), applied to every row before the format is
            detected, for sets whose rows are a known format under other field names.

    Returns:
        The examples, the report of dropped rows, the source description and the format.

    Raises:
        DataValidationError: a file-level problem, invalid rows (unless ``drop_invalid``), or no
            valid row left.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown preference format {format!r}; expected one of {list(FORMATS)}")
    resolved = resolve_source(source, split=split, subset=subset, data_dir=data_dir)
    raw = read_rows(resolved, split=split, subset=subset, limit=limit)
    if columns:
        raw = rename_fields(raw, columns)
    has_objects = any(isinstance(value, dict) for _, value in raw.records)
    # Without a single JSON object every row is already invalid (not JSON, not an object), and
    # any format reports such rows the same way.
    if format is not None:
        fmt = format
    elif has_objects:
        fmt = detect_format(raw.fields, raw.source)
    else:
        fmt = next(iter(FORMATS))

    report = DropReport(source=raw.source, unit=raw.unit, num_rows=len(raw.records))
    examples = []
    for index, (row, value) in enumerate(raw.records):
        try:
            examples.append(normalize_row(value, fmt, index))
        except RowError as err:
            report.invalid.append(InvalidRow(row=row, reason=err.reason, detail=err.detail))
    if report.invalid and not drop_invalid:
        raise DataValidationError(report.error_message(), source=raw.source, report=report)
    if not examples:
        raise DataValidationError(
            f"{raw.source}: no valid preference pair left; {report.summary()}",
            source=raw.source,
            report=report,
        )
    return PreferenceLoadResult(examples=examples, dropped=report, source=raw.source, format=fmt)


def rename_fields(raw: RawRows, columns: Mapping[str, str]) -> RawRows:
    """``raw`` with each row's fields renamed by ``columns`` (source name -> new name).

    Fields not named keep their names; a row that is not a JSON object is left as it is (the
    format reports it).
    """

    def rename(value: object) -> object:
        if not isinstance(value, dict):
            return value
        return {columns.get(key, key): field for key, field in value.items()}

    return replace(
        raw,
        records=[(row, rename(value)) for row, value in raw.records],
        fields=[columns.get(name, name) for name in raw.fields],
    )


def train_val_split(
    examples: Sequence[PreferenceExample],
    *,
    val_fraction: float | None = None,
    val_size: int | None = None,
    seed: int = 0,
) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """Split examples into (train, val), deterministic given ``seed`` and the example count.

    Exactly one of ``val_fraction`` (in [0, 1); the validation size is
    ``round(val_fraction * n)``) and ``val_size`` is given. The validation rows are drawn with
    ``random.Random(seed)`` (:func:`mrpo.data.splits.split_rows`, which also makes test
    splits), which does not depend on the Python hash seed; both parts keep the input order.

    Raises:
        ValueError: both or neither size given, a size out of range, or no training row left.
    """
    if (val_fraction is None) == (val_size is None):
        raise ValueError("give exactly one of val_fraction and val_size")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    size = val_fraction if val_fraction is not None else val_size
    assert size is not None
    counts = split_counts(len(examples), val_size=size)  # OptionError is a ValueError
    train, val, _ = split_rows(examples, counts, seed=seed)
    return train, val
