"""Preference collation and the length-grouped batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mrpo.data.collate import LengthGroupedBatchSampler, PreferenceCollator, pair_lengths
from mrpo.data.types import TokenizedPair

PAIRS = [
    TokenizedPair(prompt_ids=(1, 2), chosen_ids=(3,), rejected_ids=(4, 5, 6), index=10),
    TokenizedPair(prompt_ids=(7,), chosen_ids=(8, 9), rejected_ids=(11,), index=20),
]
X = -100


def test_right_padding_layout():
    batch = PreferenceCollator(pad_token_id=0)(PAIRS)
    assert batch.input_ids.tolist() == [
        [1, 2, 3, 0, 0],  # pair 0 chosen
        [7, 8, 9, 0, 0],  # pair 1 chosen
        [1, 2, 4, 5, 6],  # pair 0 rejected
        [7, 11, 0, 0, 0],  # pair 1 rejected
    ]
    assert batch.attention_mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1] * 5,
        [1, 1, 0, 0, 0],
    ]
    assert batch.labels.tolist() == [
        [X, X, 3, X, X],
        [X, 8, 9, X, X],
        [X, X, 4, 5, 6],
        [X, 11, X, X, X],
    ]
    assert batch.index.tolist() == [10, 20]
    assert batch.input_ids.dtype == batch.labels.dtype == torch.long
    assert batch.ref_chosen is None and batch.num_pairs == 2


def test_left_padding_and_multiple_of():
    batch = PreferenceCollator(pad_token_id=99, padding_side="left", pad_to_multiple_of=4)(PAIRS)
    assert batch.input_ids.tolist() == [
        [99, 99, 99, 99, 99, 1, 2, 3],
        [99, 99, 99, 99, 99, 7, 8, 9],
        [99, 99, 99, 1, 2, 4, 5, 6],
        [99, 99, 99, 99, 99, 99, 7, 11],
    ]
    assert batch.labels.tolist()[2] == [X, X, X, X, X, 4, 5, 6]
    assert batch.attention_mask.sum(1).tolist() == [3, 3, 5, 2]


def test_left_and_right_padding_score_the_same_tokens_even_without_a_prompt():
    from mrpo.logprobs import model_sequence_logprobs
    from mrpo.testing.models import make_tiny_model

    pairs = [
        *PAIRS,
        TokenizedPair(prompt_ids=(), chosen_ids=(5, 8, 2), rejected_ids=(9,), index=30),
    ]
    model = make_tiny_model(16, hidden_size=16, num_heads=2)
    scored = {}
    for side in ("right", "left"):
        batch = PreferenceCollator(pad_token_id=0, padding_side=side)(pairs)
        # the empty prompt's first response token is never a target, on either side
        assert int((batch.labels != X).sum(1)[2]) == 2 and int((batch.labels != X).sum(1)[5]) == 0
        with torch.no_grad():
            scored[side] = model_sequence_logprobs(
                model, batch.input_ids, batch.attention_mask, batch.labels
            )
    torch.testing.assert_close(scored["left"].logps, scored["right"].logps, atol=1e-5, rtol=1e-5)
    assert torch.equal(scored["left"].num_tokens, scored["right"].num_tokens)


def test_ref_lookup_attached_as_float():
    table = torch.arange(60, dtype=torch.float64).reshape(2, 30)  # (K=2, rows of the data set)

    def lookup(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return table[:, index], -table[:, index]

    batch = PreferenceCollator(0, ref_lookup=lookup)(PAIRS)
    assert batch.ref_chosen.tolist() == [[10.0, 20.0], [40.0, 50.0]]
    assert batch.ref_rejected.tolist() == [[-10.0, -20.0], [-40.0, -50.0]]
    assert batch.ref_chosen.dtype == torch.float32


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((2, 3), (2, 3)), r"ref_chosen of shape \(2, 3\); want \(K, 2\)"),
        (((2, 2), (1, 2)), "shapes must match"),
    ],
)
def test_ref_lookup_shape_checked(shapes, match):
    collator = PreferenceCollator(
        0, ref_lookup=lambda index: (torch.zeros(shapes[0]), torch.zeros(shapes[1]))
    )
    with pytest.raises(ValueError, match=match):
        collator(PAIRS)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pad_token_id": None}, "pad_token_id must be an int"),
        ({"pad_token_id": 0, "padding_side": "middle"}, "padding_side"),
        ({"pad_token_id": 0, "pad_to_multiple_of": 0}, "pad_to_multiple_of"),
    ],
)
def test_collator_options_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreferenceCollator(**kwargs)


def test_empty_batch_rejected():
    with pytest.raises(ValueError, match="empty"):
        PreferenceCollator(0)([])


# --- sampler -------------------------------------------------------------------------------


def random_lengths(n: int = 500, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(1, 400, size=n).tolist()


def test_sampler_is_deterministic_per_seed_and_epoch():
    lengths = random_lengths()
    a, b = (
        LengthGroupedBatchSampler(lengths, 8, seed=3),
        LengthGroupedBatchSampler(lengths, 8, seed=3),
    )
    assert list(a) == list(b)
    epoch0 = list(a)
    a.set_epoch(1)
    assert list(a) != epoch0
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(LengthGroupedBatchSampler(lengths, 8, seed=4)) != epoch0


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_covers_each_row_once(drop_last):
    lengths = random_lengths(101)
    sampler = LengthGroupedBatchSampler(lengths, 8, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (12 if drop_last else 13)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == (96 if drop_last else 101)
    assert all(len(b) == 8 for b in batches[:-1])
    # the batch with the longest row comes first
    assert max(lengths) in [lengths[i] for i in batches[0]]


def test_sampler_without_shuffle_sorts_by_length():
    lengths = [5, 1, 9, 3, 7]
    batches = list(LengthGroupedBatchSampler(lengths, 2, shuffle=False))
    assert batches == [[2, 4], [0, 3], [1]]


def test_sampler_without_grouping():
    lengths = random_lengths(20)
    assert list(LengthGroupedBatchSampler(lengths, 8, shuffle=False, group_by_length=False)) == [
        list(range(8)),
        list(range(8, 16)),
        list(range(16, 20)),
    ]
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=2, group_by_length=False)
    perm = np.random.default_rng([2, 0]).permutation(20).tolist()
    assert list(sampler) == [perm[:8], perm[8:16], perm[16:]]


def test_sampler_data_parallel_ranks_get_equal_disjoint_shares():
    lengths = random_lengths(50)
    full = list(LengthGroupedBatchSampler(lengths, 4, seed=1))  # 13 batches
    shares = [
        list(LengthGroupedBatchSampler(lengths, 4, seed=1, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert [len(s) for s in shares] == [5, 5, 5]
    assert shares[0] == full[0::3] and shares[1][:4] == full[1::3]
    assert shares[1][4] == full[0] and shares[2][4] == full[1]  # padded by repeating from the start
    dropped = [
        list(LengthGroupedBatchSampler(lengths, 4, seed=1, num_replicas=3, rank=r, drop_last=True))
        for r in range(3)
    ]
    assert [len(s) for s in dropped] == [4, 4, 4]


def test_sampler_cuts_padding():
    lengths = random_lengths(2000)

    def pad_fraction(batches: list[list[int]]) -> float:
        sizes = [[lengths[i] for i in b] for b in batches]
        return sum(len(s) * max(s) - sum(s) for s in sizes) / sum(len(s) * max(s) for s in sizes)

    perm = np.random.default_rng(0).permutation(2000).tolist()
    random_batches = [perm[i : i + 16] for i in range(0, 2000, 16)]
    grouped = list(LengthGroupedBatchSampler(lengths, 16))
    assert pad_fraction(random_batches) > 0.4
    assert pad_fraction(grouped) < 0.05


def test_sampler_and_collator_in_a_dataloader():
    pairs = [
        TokenizedPair(tuple(range(1, 2 + i % 5)), (7,) * (1 + i % 3), (8,), index=i)
        for i in range(10)
    ]
    assert pair_lengths(pairs[:3]) == [2, 4, 6]
    sampler = LengthGroupedBatchSampler(pair_lengths(pairs), 4)
    loader = DataLoader(pairs, batch_sampler=sampler, collate_fn=PreferenceCollator(0))
    batches = list(loader)
    assert sorted(b.num_pairs for b in batches) == [2, 4, 4]
    assert sorted(i for b in batches for i in b.index.tolist()) == list(range(10))


def test_sampler_options_checked():
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchSampler([1, 2], 0)
    with pytest.raises(ValueError, match="rank"):
        LengthGroupedBatchSampler([1, 2], 1, num_replicas=2, rank=2)
