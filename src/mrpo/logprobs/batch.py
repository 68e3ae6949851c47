"""Log-probs of a batch in either layout: the one call of the training step and of reference
scoring, which need not know whether the batch is padded (:mod:`mrpo.logprobs.sequence`) or
packed (:mod:`mrpo.logprobs.packed_logprobs`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from mrpo.logprobs.fused_head import DEFAULT_CHUNK_TOKENS
from mrpo.logprobs.packed_logprobs import packed_sequence_logprobs
from mrpo.logprobs.packed_rows import PackedRows
from mrpo.logprobs.sequence import IGNORE_INDEX, SequenceLogProbs, model_sequence_logprobs
from mrpo.logprobs.shared import pair_shared_tokens


class ScoredBatch(Protocol):
    """What :func:`batch_sequence_logprobs` reads from a batch (a ``PreferenceBatch`` is one).

    ``input_ids``, ``attention_mask`` and ``labels`` (N, T) are the padded layout; when
    ``packed`` is set, it is the batch's layout and the other fields are not used.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    packed: PackedRows | None


def scored_token_counts(batch: ScoredBatch) -> torch.Tensor:
    """(N,) int64 scored tokens of each sequence of a batch, in either layout."""
    if batch.packed is not None:
        return batch.packed.token_counts()
    return (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=-1)


def batch_sequence_logprobs(
    model: torch.nn.Module,
    batch: ScoredBatch,
    *,
    average: bool = False,
    chunk_size: int | None = None,
    fused_head: bool = True,
    head_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    pair_shared: bool = False,
) -> SequenceLogProbs:
    """Log-probs of a batch's scored sequences, in its padded or packed layout.

    Args and returns as :func:`~mrpo.logprobs.model_sequence_logprobs` (``chunk_size`` applies
    to the padded layout's logits path only). With ``pair_shared``, the batch's 2B sequences
    are B pairs (chosen first) and ``shared_logps`` sums each one's first
    min(|y_w|, |y_l|) scored tokens (:func:`~mrpo.logprobs.shared.pair_shared_tokens`), in
    the same forward pass.
    """
    shared = pair_shared_tokens(scored_token_counts(batch)) if pair_shared else None
    if batch.packed is not None:
        return packed_sequence_logprobs(
            model,
            batch.packed,
            average=average,
            fused_head=fused_head,
            head_chunk_tokens=head_chunk_tokens,
            shared_tokens=shared,
        )
    return model_sequence_logprobs(
        model,
        batch.input_ids,
        batch.attention_mask,
        batch.labels,
        average=average,
        chunk_size=chunk_size,
        fused_head=fused_head,
        head_chunk_tokens=head_chunk_tokens,
        shared_tokens=shared,
    )
