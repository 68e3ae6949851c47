"""Length filters: percentile floors, the longest tokenization over models, and their report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrpo.data.filters import (
    LengthFilter,
    above_percentile_mask,
    filter_by_length,
    longest_tokenization,
    percentile_floors,
)
from mrpo.errors import OptionError


def test_percentile_floors_interpolate_linearly_like_numpy() -> None:
    # Lengths 1..40: the 2.5th percentile sits at rank 0.025 * 39 = 0.975 -> 1 + 0.975 = 1.975.
    column = torch.arange(1, 41)
    assert percentile_floors(column[:, None], 2.5).tolist() == pytest.approx([1.975])
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=(257, 3))
    for q in (0.0, 2.5, 37.0, 99.9):
        expected = np.percentile(lengths, q, axis=0)
        got = percentile_floors(torch.from_numpy(lengths), q).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_a_pair_is_dropped_when_any_field_is_below_its_floor() -> None:
    # Floors at the 50th percentile: prompt 20, chosen 5, rejected 8.
    lengths = torch.tensor([[10, 9, 9], [20, 5, 7], [30, 1, 8]])
    assert percentile_floors(lengths, 50).tolist() == [20.0, 5.0, 8.0]
    assert above_percentile_mask(lengths, 50).tolist() == [False, False, False]
    assert above_percentile_mask(lengths, 0).tolist() == [True, True, True]
    lengths = torch.tensor([[10, 9, 9], [20, 5, 8], [30, 6, 8]])  # floors 20, 6, 8
    assert above_percentile_mask(lengths, 50).tolist() == [False, False, True]


def test_longest_tokenization_is_prompt_plus_the_longer_response_over_models() -> None:
    lengths = torch.tensor(
        [
            [[10, 3, 5], [4, 4, 4]],  # model 0: 15 and 8
            [[12, 2, 1], [1, 9, 2]],  # model 1: 14 and 10
        ]
    )
    assert longest_tokenization(lengths).tolist() == [15, 10]


def test_filter_by_length_applies_both_filters_and_reports_them() -> None:
    rows = ["a", "b", "c", "d", "e"]
    policy = torch.tensor([[5, 5, 5], [1, 5, 5], [5, 5, 5], [5, 5, 5], [9, 9, 9]])
    other = policy.clone()
    other[2, 1] = 40  # pair c is too long for the other model's tokenizer
    lengths = torch.stack([policy, other])
    settings = LengthFilter(min_percentile=10, fit_all_references=True)
    kept, report = filter_by_length(rows, lengths, settings, max_length=30)
    # Floors (10th percentile): prompt 1 + 0.4 * 4 = 2.6, chosen 5, rejected 5: b is short.
    assert kept == ["a", "d", "e"]
    assert (report.rows, report.dropped_short, report.dropped_too_long, report.kept) == (5, 1, 1, 3)
    assert report.floors == pytest.approx((2.6, 5.0, 5.0))
    # Only the fit filter, then only the percentile filter.
    assert filter_by_length(rows, lengths, LengthFilter(fit_all_references=True), max_length=30)[
        0
    ] == ["a", "b", "d", "e"]
    kept, report = filter_by_length(rows, lengths, LengthFilter(min_percentile=10), max_length=30)
    assert kept == ["a", "c", "d", "e"] and report.dropped_too_long == 0


@pytest.mark.parametrize("q", [-1.0, 100.0, float("nan")])
def test_an_unusable_percentile_is_refused(q: float) -> None:
    with pytest.raises(OptionError) as info:
        LengthFilter(min_percentile=q).check()
    assert info.value.option == "min_percentile"


def test_the_filters_are_off_by_default() -> None:
    assert not LengthFilter().enabled
    assert LengthFilter(min_percentile=0).enabled and LengthFilter(fit_all_references=True).enabled
