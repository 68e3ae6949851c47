"""The largest training batch of a run, from its tokenized pairs (no model): what the memory
plan sizes activations by, and the tokens the time estimate counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mrpo.data.layout import PairLayout, pair_costs
from mrpo.data.table import id_lengths
from mrpo.data.types import TokenizedPair


@dataclass(frozen=True)
class BatchShape:
    """A batch as the policy computes it.

    Attributes:
        positions: row positions, padding included (rows x the widest row; packed: the sum).
        rows: rows of the batch.
        row_tokens: the widest row.
        scored: response tokens (positions through the LM head).
    """

    positions: int
    rows: int
    row_tokens: int
    scored: int


def largest_batch(
    pairs: Sequence[TokenizedPair], layout: PairLayout, batch_size: int
) -> BatchShape:
    """The batch of the ``batch_size`` costliest pairs in ``layout``: length-grouped batches
    hold pairs of similar lengths, so the costliest batch is close to this one."""
    if not pairs:
        return BatchShape(0, 0, 0, 0)
    costs = np.asarray(pair_costs(pairs, layout))
    top = np.argsort(-costs, kind="stable")[: max(batch_size, 1)]
    _, chosen, rejected = id_lengths([pairs[int(i)] for i in top])
    scored = int(chosen.sum() + rejected.sum())
    widest, n = int(costs[top].max()), len(top)
    if layout.padded:  # two rows per pair, each prompt + the longer response
        rows, width = 2 * n, widest // 2
    elif not layout.pack:  # one row per pair: prompt, chosen, rejected
        rows, width = n, widest
    else:  # first-fit rows of at most row_tokens (default: the widest block)
        width = max(layout.row_tokens or widest, widest)
        rows = -(-int(costs[top].sum()) // width)
    return BatchShape(rows * width, rows, width, scored)


def epoch_tokens(pairs: Sequence[TokenizedPair], layout: PairLayout) -> int:
    """Real tokens the policy computes in one pass over ``pairs`` (no padding)."""
    if not pairs:
        return 0
    prompt, chosen, rejected = id_lengths(pairs)
    prompts = 1 if layout.share_prefix else 2
    return int(prompts * prompt.sum() + chosen.sum() + rejected.sum())
