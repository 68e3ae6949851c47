"""Find a preference data source and read its raw rows.

Resolution order of ``source`` (first match wins), with ``root`` the ``data_dir`` argument or,
when that is None, the environment variable ``MRPO_DATA_DIR``:

1. ``source`` is an existing file or folder (absolute, or relative to the working directory);
2. ``root / source`` is an existing file or folder (``source`` relative to the data mirror);
3. a folder found by 1 or 2 gives its file ``[<subset>/]<split><ext>`` if there is one, else
   it is handed to ``datasets.load_dataset(folder, data_dir=subset, split=split)``;
4. ``source`` is a hub id ``owner/name``: the mirror file ``root/<name>/[<subset>/]<split><ext>``
   (``Anthropic/hh-rlhf``, subset ``harmless-base``, split ``test`` ->
   ``hh-rlhf/harmless-base/test.jsonl.gz``), which makes the mirror the offline path;
5. otherwise ``datasets.load_dataset(source, data_dir=subset, split=split)`` (network).

``<ext>`` is tried in the order of `SUPPORTED_EXTENSIONS`. A ``source`` with a supported file
extension is always a file: when none of the paths exists the error lists every path tried.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrpo.data.validation import DataValidationError, RowError

SUPPORTED_EXTENSIONS = (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".parquet", ".csv")
DATA_DIR_ENV = "MRPO_DATA_DIR"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class ResolvedSource:
    """Where rows will be read from.

    Attributes:
        kind: ``"file"`` (read by this module) or ``"hub"`` (``datasets.load_dataset``, which
            also takes a local dataset directory).
        location: the file path, hub id or directory.
        tried: every local path looked at, in order (for error messages).
    """

    kind: str
    location: str
    tried: tuple[str, ...] = ()


@dataclass
class RawRows:
    """Rows of one source before normalization.

    Attributes:
        source: description used in messages (a path, or a hub id with subset and split).
        unit: ``"line"`` when row numbers are line numbers (JSON Lines), else ``"row"``.
        records: ``(row number, value)`` in source order; ``value`` is the parsed row, or a
            `RowError` for a row that could not be parsed.
        fields: field names seen in the rows (or the columns), in first-seen order.
    """

    source: str
    unit: str
    records: list[tuple[int, Any]] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The data mirror folder: ``data_dir`` if given, else ``$MRPO_DATA_DIR``, else None."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return Path(root).expanduser() if root else None


def _has_supported_extension(name: str) -> bool:
    return name.lower().endswith(SUPPORTED_EXTENSIONS)


def _split_file(base: Path, subset: str | None, split: str, tried: list[str]) -> Path | None:
    """The first existing ``base/[subset/]split<ext>``, recording each path looked at."""
    folder = base / subset if subset else base
    for ext in SUPPORTED_EXTENSIONS:
        candidate = folder / f"{split}{ext}"
        tried.append(str(candidate))
        if candidate.is_file():
            return candidate
    return None


def resolve_source(
    source: str, *, split: str, subset: str | None = None, data_dir: str | None = None
) -> ResolvedSource:
    """Resolve ``source`` to a file, a local dataset directory or a hub id (see module doc).

    Raises:
        DataValidationError: nothing matches; the message lists every path tried.
    """
    root = data_root(data_dir)
    tried: list[str] = []
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() or root is None else [path, root / path]
    for candidate in candidates:
        tried.append(str(candidate))
        if candidate.is_file():
            return ResolvedSource("file", str(candidate), tuple(tried))
        if candidate.is_dir():
            found = _split_file(candidate, subset, split, tried)
            if found is not None:
                return ResolvedSource("file", str(found), tuple(tried))
            return ResolvedSource("hub", str(candidate), tuple(tried))
    if _HUB_ID.fullmatch(source) and not _has_supported_extension(source):
        if root is not None:
            found = _split_file(root / source.split("/")[1], subset, split, tried)
            if found is not None:
                return ResolvedSource("file", str(found), tuple(tried))
        return ResolvedSource("hub", source, tuple(tried))
    hint = "" if root is not None else f" ({DATA_DIR_ENV} is not set and no data_dir was given)"
    raise DataValidationError(
        f"preference data not found: {source!r}{hint}; tried: " + ", ".join(tried),
        source=source,
    )


def read_rows(
    resolved: ResolvedSource, *, split: str, subset: str | None = None, limit: int | None = None
) -> RawRows:
    """Read the raw rows of a resolved source (at most ``limit`` rows).

    Raises:
        DataValidationError: unsupported extension, empty file, damaged gzip, text that is not
            UTF-8, a JSON/CSV/parquet file that cannot be parsed as a whole, a hub load failure.
    """
    if resolved.kind == "hub":
        return _read_hub(resolved, split=split, subset=subset, limit=limit)
    path = Path(resolved.location)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        rows = _read_jsonl(path, limit)
    elif name.endswith((".json", ".json.gz")):
        rows = _read_json(path, limit)
    elif name.endswith(".csv"):
        rows = _read_csv(path, limit)
    elif name.endswith(".parquet"):
        rows = _read_parquet(path, limit)
    else:
        raise DataValidationError(
            f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_EXTENSIONS)}",
            source=str(path),
        )
    if not rows.records:
        raise DataValidationError(f"{path}: the file is empty (no rows)", source=str(path))
    return rows


@contextmanager
def _gzip_errors(path: Path, where: str) -> Iterator[None]:
    """Turn the errors of a damaged gzip stream into a `DataValidationError`."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataValidationError(
            f"{path}: damaged or truncated gzip file ({exc}; {where})", source=str(path)
        ) from exc


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _decode(data: bytes, path: Path, first_line: int = 1) -> str:
    """Decode UTF-8 (a leading byte-order mark is dropped), naming the line of a bad byte."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data[: exc.start].count(b"\n")
        raise DataValidationError(
            f"{path}: line {line} is not UTF-8 text (byte {data[exc.start]:#04x}); "
            "re-encode the file as UTF-8",
            source=str(path),
        ) from exc


def _add_fields(rows: RawRows, value: Any) -> None:
    if isinstance(value, dict):
        rows.fields.extend(k for k in value if k not in rows.fields)


def _parse_json_line(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return RowError("not_json", f"not valid JSON ({exc.msg}, column {exc.colno})")


def _read_jsonl(path: Path, limit: int | None) -> RawRows:
    rows = RawRows(str(path), "line")
    with _open_binary(path) as fh, _gzip_errors(path, "stream ended"):
        for line_no, raw in enumerate(fh, start=1):
            text = _decode(raw, path, line_no)
            if not text.strip():
                continue
            if limit is not None and len(rows.records) >= limit:
                break
            value = _parse_json_line(text)
            _add_fields(rows, value)
            rows.records.append((line_no, value))
    return rows


def _read_json(path: Path, limit: int | None) -> RawRows:
    with _open_binary(path) as fh, _gzip_errors(path, "while reading"):
        text = _decode(fh.read(), path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise DataValidationError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                source=str(path),
            ) from exc
        # A first complete value followed by more: JSON Lines under a .json name (the layout
        # `datasets.Dataset.to_json` writes).
        rows = RawRows(str(path), "line")
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip() and (limit is None or len(rows.records) < limit):
                value = _parse_json_line(line)
                _add_fields(rows, value)
                rows.records.append((line_no, value))
        return rows
    if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        lengths = {len(v) for v in doc.values()}
        if len(lengths) == 1:  # column-oriented: {"prompt": [...], "chosen": [...], ...}
            doc = [
                dict(zip(doc, values, strict=True)) for values in zip(*doc.values(), strict=True)
            ]
    if not isinstance(doc, list):
        raise DataValidationError(
            f"{path}: expected a JSON array of objects (or JSON Lines), got a JSON "
            f"{type(doc).__name__}",
            source=str(path),
        )
    rows = RawRows(str(path), "row")
    for row_no, value in enumerate(doc[:limit] if limit is not None else doc, start=1):
        _add_fields(rows, value)
        rows.records.append((row_no, value))
    return rows


def _maybe_messages(cell: str | None) -> Any:
    """A CSV cell holding a JSON list of chat messages is decoded; other cells stay text."""
    if cell is None or not cell.lstrip().startswith("["):
        return cell
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        return cell
    is_messages = isinstance(value, list) and all(isinstance(m, dict) for m in value)
    return value if is_messages and value else cell


def _read_csv(path: Path, limit: int | None) -> RawRows:
    text = _decode(path.read_bytes(), path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = RawRows(str(path), "row", fields=list(reader.fieldnames or []))
    try:
        for row_no, record in enumerate(reader, start=1):
            if limit is not None and row_no > limit:
                break
            cells = {k: _maybe_messages(v) for k, v in record.items() if k is not None}
            rows.records.append((row_no, cells))
    except csv.Error as exc:
        raise DataValidationError(
            f"{path}: cannot parse CSV at line {reader.line_num}: {exc}", source=str(path)
        ) from exc
    return rows


def _read_parquet(path: Path, limit: int | None) -> RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(
            f"{path}: not a readable parquet file ({exc})", source=str(path)
        ) from exc
    if limit is not None:
        table = table.slice(0, limit)
    rows = RawRows(str(path), "row", fields=list(table.column_names))
    rows.records = list(enumerate(table.to_pylist(), start=1))
    return rows


def _read_hub(
    resolved: ResolvedSource, *, split: str, subset: str | None, limit: int | None
) -> RawRows:
    import datasets

    description = f"{resolved.location} (subset={subset}, split={split})"
    try:
        ds = datasets.load_dataset(resolved.location, data_dir=subset, split=split)
    except Exception as exc:  # network, unknown repo or split: all reported the same way
        mirror = f"; local paths tried: {', '.join(resolved.tried)}" if resolved.tried else ""
        raise DataValidationError(
            f"cannot load {description} with datasets.load_dataset: "
            f"{type(exc).__name__}: {exc}{mirror}. For offline runs point {DATA_DIR_ENV} "
            "at a mirror holding <name>/<subset>/<split>.jsonl.gz",
            source=resolved.location,
        ) from exc
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = RawRows(description, "row", fields=list(ds.column_names))
    rows.records = list(enumerate(ds, start=1))
    if not rows.records:
        raise DataValidationError(f"{description}: the split is empty", source=resolved.location)
    return rows
