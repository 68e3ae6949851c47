"""Tokenized pairs as columns of token ids: :class:`PairTable`.

A Python tuple of ints costs about 36 bytes a token; a pair table holds each column
(``prompt_ids``, ``chosen_ids``, ``rejected_ids``) as one int32 array of all its tokens and an
int64 array of offsets, 4 bytes a token, and reads as a sequence of
:class:`~mrpo.data.types.TokenizedPair` (each made when it is asked for). A table read from
an Arrow file (:mod:`mrpo.data.prepare`) is memory-mapped: its token ids cost no memory until
they are read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import Any, overload

import numpy as np
import pyarrow as pa

from mrpo.data.types import TokenizedPair

ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
"""The token-id columns of a pair table, in :class:`TokenizedPair` order."""

FINGERPRINT_METADATA = b"mrpo.pairs_fingerprint"
"""Arrow schema metadata of a stored table: its :func:`pairs_fingerprint` (computing it takes a
pass over every token), read back by :meth:`PairTable.from_arrow`."""

Column = tuple[np.ndarray, np.ndarray]
"""(offsets (N + 1,) int64, values (total tokens,) int32) of one token-id column."""


def column_from_lists(rows: Iterable[Sequence[int]]) -> Column:
    """A token-id column from one id list per row."""
    rows = list(rows)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
    return offsets, values


def slice_rows(column: Column, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Column:
    """A new column whose row k is ``lengths[k]`` ids of row ``rows[k]`` from ``starts[k]`` on.

    Args:
        column: the column to read.
        rows: (K,) row numbers.
        starts: (K,) where each new row starts within its row (0: the row's start).
        lengths: (K,) tokens of each new row (within the row: ``starts + lengths <= length``).
    """
    offsets, values = column
    first = offsets[rows] + starts
    new = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new[1:])
    # Output token j of new row k is input token first[k] + (j - new[k]).
    flat = np.arange(new[-1], dtype=np.int64) + np.repeat(first - new[:-1], lengths)
    return new, values[flat]


def _take(column: Column, positions: np.ndarray) -> Column:
    """The rows ``positions`` of a column, whole."""
    lengths = np.diff(column[0])[positions]
    return slice_rows(column, positions, np.zeros_like(positions), lengths)


class PairTable(Sequence[TokenizedPair]):
    """N tokenized pairs in columns (module doc); ``table[i]`` is the i-th ``TokenizedPair``.

    Args:
        index: (N,) int64 data set row of each pair (the attribute ``indices``).
        truncated: (N,) bool whether anything of the pair was cut.
        columns: the ``ID_COLUMNS`` as ``(offsets, values)``.
        fingerprint: the table's :func:`pairs_fingerprint`, when already known.
    """

    def __init__(
        self,
        index: np.ndarray,
        truncated: np.ndarray,
        columns: dict[str, Column],
        fingerprint: str | None = None,
    ):
        if set(columns) != set(ID_COLUMNS):
            raise ValueError(f"a pair table has the columns {ID_COLUMNS}, got {sorted(columns)}")
        for name, (offsets, _) in columns.items():
            if len(offsets) != len(index) + 1:
                raise ValueError(f"column {name} has {len(offsets) - 1} rows, index {len(index)}")
        self.indices = np.asarray(index, dtype=np.int64)
        self.truncated = np.asarray(truncated, dtype=bool)
        self.columns = columns
        self._fingerprint = fingerprint

    @classmethod
    def from_pairs(cls, pairs: Iterable[TokenizedPair]) -> PairTable:
        """A table of the given pairs, in order."""
        pairs = list(pairs)
        return cls(
            np.array([p.index for p in pairs], dtype=np.int64),
            np.array([p.truncated for p in pairs], dtype=bool),
            {name: column_from_lists([getattr(p, name) for p in pairs]) for name in ID_COLUMNS},
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> PairTable:
        """A table over an Arrow table with ``index``, ``truncated`` and the ``ID_COLUMNS``
        (``list<int32>``; ``FINGERPRINT_METADATA`` if stored); zero-copy where the Arrow
        columns are one chunk."""
        columns = {}
        for name in ID_COLUMNS:
            array = table.column(name).combine_chunks()
            if array.offset:  # a sliced list array: start its offsets at 0
                array = pa.concat_arrays([array])
            offsets = array.offsets.to_numpy().astype(np.int64, copy=False)
            values = array.values.to_numpy()
            columns[name] = (offsets - offsets[0], values[offsets[0] : offsets[-1]])
        fingerprint = (table.schema.metadata or {}).get(FINGERPRINT_METADATA)
        return cls(
            table.column("index").to_numpy(),
            table.column("truncated").to_numpy(zero_copy_only=False),
            columns,
            fingerprint=fingerprint.decode() if fingerprint else None,
        )

    def to_arrow(self) -> pa.Table:
        """The table as Arrow columns (``index``, ``truncated``, ``list<int32>`` id columns)."""
        arrays = {"index": pa.array(self.indices), "truncated": pa.array(self.truncated)}
        for name, (offsets, values) in self.columns.items():
            arrays[name] = pa.LargeListArray.from_arrays(
                pa.array(offsets), pa.array(values, type=pa.int32())
            )
        return pa.table(arrays)

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, item: int) -> TokenizedPair: ...

    @overload
    def __getitem__(self, item: slice) -> PairTable: ...

    def __getitem__(self, item: int | slice) -> TokenizedPair | PairTable:
        if isinstance(item, slice):
            return self.select(np.arange(len(self))[item])
        i = range(len(self))[item]  # negative positions and bounds as a list's
        prompt, chosen, rejected = (tuple(row) for row in self.row_ids(i))
        return TokenizedPair(
            prompt, chosen, rejected, index=int(self.indices[i]), truncated=bool(self.truncated[i])
        )

    def row_ids(self, i: int) -> list[list[int]]:
        """The prompt, chosen and rejected ids of row ``i`` as lists."""
        return [
            values[offsets[i] : offsets[i + 1]].tolist()
            for offsets, values in (self.columns[name] for name in ID_COLUMNS)
        ]

    def __iter__(self) -> Iterator[TokenizedPair]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same pairs (another table, or a list)."""
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-equality, as a list

    def select(self, positions: Sequence[int] | np.ndarray) -> PairTable:
        """A new table of the rows at ``positions`` (0-based), in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        return PairTable(
            self.indices[positions],
            self.truncated[positions],
            {name: _take(column, positions) for name, column in self.columns.items()},
        )

    def lengths(self, name: str) -> np.ndarray:
        """(N,) int64 tokens of one id column per row."""
        return np.diff(self.columns[name][0])

    def fingerprint(self) -> str:
        """:func:`pairs_fingerprint` of the table, computed once."""
        if self._fingerprint is None:
            self._fingerprint = pairs_fingerprint(self)
        return self._fingerprint


def concat_tables(tables: Sequence[PairTable]) -> PairTable:
    """The rows of ``tables`` one after the other."""
    columns = {}
    for name in ID_COLUMNS:
        parts = [t.columns[name] for t in tables]
        sizes = np.cumsum([0] + [int(offsets[-1]) for offsets, _ in parts[:-1]])
        shifted = [o[1:] + s for (o, _), s in zip(parts, sizes, strict=True)]
        offsets = np.concatenate([np.zeros(1, dtype=np.int64), *shifted])
        columns[name] = (offsets, np.concatenate([v for _, v in parts]).astype(np.int32))
    return PairTable(
        np.concatenate([t.indices for t in tables]),
        np.concatenate([t.truncated for t in tables]),
        columns,
    )


def pairs_fingerprint(pairs: Iterable[TokenizedPair]) -> str:
    """A sha256 of the exact rows a model scores: each pair's token ids and data set index.

    The rows are hashed in index order, so the same rows listed in another order give the same
    fingerprint (and the same reference cache entry). A :class:`PairTable` keeps its value.
    """
    if isinstance(pairs, PairTable) and pairs._fingerprint is not None:
        return pairs._fingerprint
    rows: Iterable[list[Any]]
    if isinstance(pairs, PairTable):
        order = np.argsort(pairs.indices, kind="stable")
        rows = ([int(pairs.indices[i]), *pairs.row_ids(i)] for i in order.tolist())
    else:
        rows = (
            [p.index, list(p.prompt_ids), list(p.chosen_ids), list(p.rejected_ids)]
            for p in sorted(pairs, key=lambda p: p.index)
        )
    digest = hashlib.sha256(b"mrpo-pairs-v1\n")
    for row in rows:
        # Canonical JSON (no whitespace); for ints and lists key order and ASCII do not apply.
        digest.update(json.dumps(row, separators=(",", ":")).encode("ascii") + b"\n")
    return "sha256:" + digest.hexdigest()


def id_lengths(pairs: Sequence[TokenizedPair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) int64 prompt, chosen and rejected lengths of each pair (vectorized for a table)."""
    if isinstance(pairs, PairTable):
        p, c, r = (pairs.lengths(name) for name in ID_COLUMNS)
        return p, c, r
    p, c, r = (
        np.array([len(getattr(pair, name)) for pair in pairs], dtype=np.int64)
        for name in ID_COLUMNS
    )
    return p, c, r


def pair_indices(pairs: Sequence[TokenizedPair]) -> np.ndarray:
    """(N,) int64 data set row of each pair (vectorized for a table)."""
    if isinstance(pairs, PairTable):
        return pairs.indices
    return np.array([p.index for p in pairs], dtype=np.int64)
