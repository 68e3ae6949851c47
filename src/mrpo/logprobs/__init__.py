"""Sequence log-probabilities from a causal LM: the one place that shifts and masks.

Most callers want :func:`batch_sequence_logprobs`: the log-probs of a batch in either layout.
The modules, one job each: ``batch`` (a batch, padded or packed), ``sequence`` (padded rows,
one sequence a row), ``packed_rows`` (building packed rows: blocks of a shared prefix and
branches), ``packed_logprobs`` (log-probs of packed rows), ``attention`` (packed rows' masks,
and the model families that take them), ``fused_head`` (log-probs from hidden states without
logits, and the families that allow it), ``shared`` (sums up to a pair's shared length, LD-DPO).
"""

from mrpo.logprobs.attention import PACKED_MODEL_TYPES, packed_mask_builder
from mrpo.logprobs.batch import ScoredBatch, batch_sequence_logprobs, scored_token_counts
from mrpo.logprobs.fused_head import (
    DEFAULT_CHUNK_TOKENS,
    PLAIN_HEAD_MODEL_TYPES,
    head_logprobs,
    split_lm_head,
)
from mrpo.logprobs.packed_logprobs import packed_sequence_logprobs
from mrpo.logprobs.packed_rows import Block, PackedRows, pack_blocks
from mrpo.logprobs.sequence import (
    IGNORE_INDEX,
    SequenceLogProbs,
    accepts_logits_to_keep,
    cache_argument,
    hidden_sequence_logprobs,
    model_sequence_logprobs,
    position_ids_from_mask,
    reduce_rows,
    scored_window,
    sequence_logprobs,
)
from mrpo.logprobs.shared import (
    ld_active,
    ld_logps,
    owner_ranks,
    pair_shared_tokens,
    shared_prefix_mask,
)

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "IGNORE_INDEX",
    "PACKED_MODEL_TYPES",
    "PLAIN_HEAD_MODEL_TYPES",
    "Block",
    "PackedRows",
    "ScoredBatch",
    "SequenceLogProbs",
    "accepts_logits_to_keep",
    "batch_sequence_logprobs",
    "cache_argument",
    "head_logprobs",
    "hidden_sequence_logprobs",
    "ld_active",
    "ld_logps",
    "model_sequence_logprobs",
    "owner_ranks",
    "pack_blocks",
    "packed_mask_builder",
    "packed_sequence_logprobs",
    "pair_shared_tokens",
    "position_ids_from_mask",
    "reduce_rows",
    "scored_token_counts",
    "scored_window",
    "sequence_logprobs",
    "shared_prefix_mask",
    "split_lm_head",
]
