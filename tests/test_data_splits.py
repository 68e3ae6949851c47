"""Train / validation / test splits: sizes, determinism, disjointness, and the old two-way split."""

from __future__ import annotations

import random

import pytest

from mrpo.data.preference import train_val_split
from mrpo.data.splits import SplitCounts, split_counts, split_rows
from mrpo.data.types import PreferenceExample
from mrpo.errors import OptionError


def examples(n: int) -> list[PreferenceExample]:
    return [
        PreferenceExample(({"role": "user", "content": f"q{i}"},), f"a{i}", f"b{i}", i)
        for i in range(n)
    ]


def ids(rows: list[PreferenceExample]) -> set[int]:
    return {ex.index for ex in rows}


@pytest.mark.parametrize(
    ("n", "sizes", "expected"),
    [
        (100, {"val_size": 0.1}, SplitCounts(90, 10, 0)),
        (100, {"val_size": 10, "test_size": 0.2}, SplitCounts(70, 10, 20)),
        (100, {"val_size": 10, "test_size": 10, "train_size": 50}, SplitCounts(50, 10, 10)),
        (100, {"val_size": 10, "test_size": 10, "train_size": 0.5}, SplitCounts(50, 10, 10)),
        (7, {"val_size": 0.25}, SplitCounts(5, 2, 0)),  # round(1.75) = 2
        (10, {"val_size": 0.25}, SplitCounts(8, 2, 0)),  # round(2.5) = 2 (to even)
    ],
)
def test_split_counts(n: int, sizes: dict, expected: SplitCounts) -> None:
    assert split_counts(n, **sizes) == expected


@pytest.mark.parametrize(
    ("sizes", "option"),
    [
        ({"val_size": 5, "test_size": 5}, "test_size"),  # no training row left of 10
        ({"val_size": 10}, "val_size"),
        ({"val_size": -1}, "val_size"),
        ({"val_size": 2.5}, "val_size"),  # from 1 up a number of rows
        ({"val_size": 2, "test_size": 2, "train_size": 7}, "train_size"),  # only 6 left
        ({"val_size": 2, "train_size": 0.0}, "train_size"),
    ],
)
def test_split_counts_name_the_unusable_size(sizes: dict, option: str) -> None:
    with pytest.raises(OptionError) as info:
        split_counts(10, **sizes)
    assert info.value.option == option


def test_split_rows_draws_val_then_test_then_train_with_one_generator() -> None:
    rows = list(range(20))
    train, val, test = split_rows(rows, SplitCounts(8, 4, 5), seed=3)
    # The same draws made independently: validation from all positions, test from the rest,
    # training from what is left, all with one Random(seed).
    rng = random.Random(3)
    want_val = set(rng.sample(range(20), 4))
    left = [i for i in range(20) if i not in want_val]
    want_test = set(rng.sample(left, 5))
    left = [i for i in left if i not in want_test]
    want_train = set(rng.sample(left, 8))
    assert (train, val, test) == (sorted(want_train), sorted(want_val), sorted(want_test))
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert split_rows(rows, SplitCounts(8, 4, 5), seed=3) == (train, val, test)
    assert split_rows(rows, SplitCounts(8, 4, 5), seed=4) != (train, val, test)


def test_without_a_test_split_the_validation_rows_are_those_of_train_val_split() -> None:
    data = examples(30)
    old_train, old_val = train_val_split(data, val_size=6, seed=7)
    train, val, test = split_rows(data, split_counts(30, val_size=6), seed=7)
    assert (train, val, test) == (old_train, old_val, [])
    # A test split takes rows from the training part only: validation stays the same.
    train, val, test = split_rows(data, split_counts(30, val_size=6, test_size=5), seed=7)
    assert val == old_val and len(test) == 5 and ids(test) <= ids(old_train)
    assert sorted(ex.index for ex in train + val + test) == list(range(30))


def test_a_training_subset_leaves_the_other_splits_unchanged() -> None:
    data = examples(40)
    full = split_rows(data, split_counts(40, val_size=5, test_size=5), seed=1)
    sub = split_rows(data, split_counts(40, val_size=5, test_size=5, train_size=12), seed=1)
    assert sub[1:] == full[1:] and len(sub[0]) == 12 and ids(sub[0]) < ids(full[0])
