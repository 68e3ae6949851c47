"""Length filters on preference pairs, applied to the loaded pairs before they are split.

Two filters, each off by default (:class:`LengthFilter`, the ``data.length_filter`` settings):

- **short pairs**: drop a pair when its prompt, chosen or rejected length (in policy tokens)
  is below the ``min_percentile``-th percentile of that field's lengths over the loaded pairs
  (percentiles interpolated linearly between order statistics, numpy's default);
- **pairs that do not fit**: keep a pair only when its longest tokenization, prompt plus the
  longer response under the policy's and under every reference's tokenizer and chat template,
  fits ``max_length`` tokens, so that no model sees a truncated pair.

The math is in pure functions of length tensors; :func:`filter_by_length` applies both to a
list of pairs given their token lengths under each model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from mrpo.domains import Flag, Number, setting
from mrpo.errors import OptionError

Row = TypeVar("Row")


@dataclass
class LengthFilter:
    """Which length filters run (module doc); also the schema of ``data.length_filter``.

    Attributes:
        min_percentile: percentile in [0, 100) below which a prompt, chosen or rejected
            length drops its pair; None: no short-pair filter.
        fit_all_references: keep only pairs whose longest tokenization over the policy and
            every reference fits ``data.max_length``.
    """

    min_percentile: float | None = setting(None, Number(float, ge=0, lt=100, nullable=True))
    fit_all_references: bool = setting(False, Flag())

    def check(self) -> None:
        """Raise :class:`~mrpo.errors.OptionError` naming an unusable setting."""
        q = self.min_percentile
        if q is not None and not (math.isfinite(q) and 0 <= q < 100):
            raise OptionError("min_percentile", f"must be in [0, 100) or null, got {q}")

    @property
    def enabled(self) -> bool:
        """Whether any filter runs."""
        return self.min_percentile is not None or self.fit_all_references


def percentile_floors(lengths: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile of each column of ``lengths``.

    Args:
        lengths: (N, F) lengths, one column per field (prompt, chosen, rejected), N >= 1.
        q: percentile in [0, 100].

    Returns:
        (F,) float64: linear interpolation between the order statistics at rank
        ``q / 100 * (N - 1)`` (numpy's and torch's default).
    """
    return torch.quantile(lengths.to(torch.float64), q / 100.0, dim=0)


def above_percentile_mask(lengths: torch.Tensor, q: float) -> torch.Tensor:
    """Which rows have every field at or above its ``q``-th percentile.

    Args:
        lengths: (N, F) lengths.
        q: percentile in [0, 100].

    Returns:
        (N,) bool: ``lengths[n, f] >= percentile_floors(lengths, q)[f]`` for every f.
    """
    return (lengths.to(torch.float64) >= percentile_floors(lengths, q)).all(dim=1)


def longest_tokenization(lengths: torch.Tensor) -> torch.Tensor:
    """Each pair's longest sequence over the models: prompt plus the longer response.

    Args:
        lengths: (M, N, 3) prompt, chosen and rejected token counts of N pairs under M
            models (each with its own tokenizer and chat template).

    Returns:
        (N,) int64 ``max_m (prompt + max(chosen, rejected))``.
    """
    per_model = lengths[..., 0] + lengths[..., 1:].amax(dim=-1)  # (M, N)
    return per_model.amax(dim=0).to(torch.int64)


@dataclass(frozen=True)
class FilterReport:
    """What :func:`filter_by_length` kept and dropped.

    Attributes:
        rows: pairs given.
        dropped_short: pairs dropped by the short-pair filter.
        dropped_too_long: pairs (still kept by the first filter) that do not fit.
        floors: the (prompt, chosen, rejected) percentile floors in policy tokens, if computed.
    """

    rows: int
    dropped_short: int = 0
    dropped_too_long: int = 0
    floors: tuple[float, ...] | None = None

    @property
    def kept(self) -> int:
        return self.rows - self.dropped_short - self.dropped_too_long


def filter_by_length(
    rows: Sequence[Row],
    lengths: torch.Tensor,
    settings: LengthFilter,
    *,
    max_length: int,
) -> tuple[list[Row], FilterReport]:
    """Apply the enabled filters of ``settings`` to ``rows`` (module doc).

    Args:
        rows: N pairs.
        lengths: (M, N, 3) their prompt, chosen and rejected token counts under M >= 1
            models; model 0 is the policy (the short-pair filter uses its counts only).
        settings: which filters run.
        max_length: the most tokens of prompt + response a model may be given.

    Returns:
        The kept rows (input order) and the report.
    """
    if lengths.dim() != 3 or lengths.shape[1:] != (len(rows), 3):
        raise ValueError(f"lengths must be (M, {len(rows)}, 3), got {tuple(lengths.shape)}")
    keep = torch.ones(len(rows), dtype=torch.bool)
    floors = None
    if settings.min_percentile is not None and rows:
        floors = percentile_floors(lengths[0], settings.min_percentile)
        keep &= above_percentile_mask(lengths[0], settings.min_percentile)
    short = int((~keep).sum())
    if settings.fit_all_references:
        keep &= longest_tokenization(lengths) <= max_length
    kept = [row for row, k in zip(rows, keep.tolist(), strict=True) if k]
    report = FilterReport(
        rows=len(rows),
        dropped_short=short,
        dropped_too_long=len(rows) - short - len(kept),
        floors=None if floors is None else tuple(float(f) for f in floors),
    )
    return kept, report
