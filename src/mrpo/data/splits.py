"""Train / validation / test splits of preference rows, deterministic given a seed.

A size below 1 is a fraction of the rows (rounded to the nearest row), from 1 up a number of
rows. The validation rows are drawn first, exactly as :func:`mrpo.data.preference.train_val_split`
draws them (so a run without a test split keeps the validation rows it always had), then the
test rows from the rest, then, when a training size is given, the training rows from what is
left; every part keeps the input order. The test split is a third split that training never
sees: validation-fitted weightings (``vdw``, ``vaw``) and feedback weightings (``thompson``)
use the validation split only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from mrpo.errors import OptionError

Row = TypeVar("Row")


@dataclass(frozen=True)
class SplitCounts:
    """How many of ``n`` rows each split takes (``train`` may leave rows unused)."""

    train: int
    val: int
    test: int


def _count(size: float, n: int, option: str) -> int:
    if size < 0:
        raise OptionError(option, f"{option} must be >= 0, got {size}")
    if size < 1:
        return round(size * n)
    if size != int(size):
        raise OptionError(option, f"{option} from 1 up is a number of rows, got {size}")
    return int(size)


def split_counts(
    n: int, *, val_size: float, test_size: float = 0.0, train_size: float | None = None
) -> SplitCounts:
    """The number of rows of each split of ``n`` rows.

    Args:
        n: rows available.
        val_size, test_size: fraction (< 1) of ``n`` or number of rows (>= 1).
        train_size: fraction of ``n`` or number of training rows; None takes every row the
            validation and test splits leave.

    Raises:
        OptionError: naming ``val_size``, ``test_size`` or ``train_size``, for a negative or
            fractional count, or sizes that leave no training row or need more rows than
            there are.
    """
    val = _count(val_size, n, "val_size")
    test = _count(test_size, n, "test_size")
    rest = n - val - test
    if rest < 1:
        raise OptionError(
            "val_size" if test == 0 else "test_size",
            f"validation ({val}) and test ({test}) rows leave no training row of {n}",
        )
    if train_size is None:
        return SplitCounts(rest, val, test)
    train = _count(train_size, n, "train_size")
    if not 1 <= train <= rest:
        raise OptionError(
            "train_size",
            f"train_size asks for {train} training rows; {rest} of {n} are left after "
            f"{val} validation and {test} test rows",
        )
    return SplitCounts(train, val, test)


def split_rows(
    rows: Sequence[Row],
    counts: SplitCounts,
    *,
    seed: int = 0,
) -> tuple[list[Row], list[Row], list[Row]]:
    """Draw (train, val, test) of the sizes in ``counts`` from ``rows`` with ``Random(seed)``.

    ``random.Random`` does not depend on the Python hash seed. Validation positions are
    ``Random(seed).sample(range(n), val)``; the test and then the training positions are
    sampled from the remaining positions, in increasing order, with the same generator.

    Returns:
        Three lists in input order; together they hold ``sum(counts)`` distinct rows.
    """
    n = len(rows)
    if counts.train + counts.val + counts.test > n:
        raise ValueError(f"split counts {counts} need more than the {n} rows given")
    rng = random.Random(seed)
    val = set(rng.sample(range(n), counts.val))
    left = [i for i in range(n) if i not in val]
    test = set(rng.sample(left, counts.test))
    left = [i for i in left if i not in test]
    train = set(left) if counts.train == len(left) else set(rng.sample(left, counts.train))

    def pick(positions: set[int]) -> list[Row]:
        return [row for i, row in enumerate(rows) if i in positions]

    return pick(train), pick(val), pick(test)
