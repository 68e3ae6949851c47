"""Sequence log-probabilities from a causal LM: the one place that shifts and masks."""

from mrpo.logprobs._lm_head import (
    DEFAULT_CHUNK_TOKENS,
    PLAIN_HEAD_MODEL_TYPES,
    head_logprobs,
    split_lm_head,
)
from mrpo.logprobs.sequence import (
    IGNORE_INDEX,
    SequenceLogProbs,
    accepts_logits_to_keep,
    cache_argument,
    hidden_sequence_logprobs,
    model_sequence_logprobs,
    position_ids_from_mask,
    scored_window,
    sequence_logprobs,
)

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "IGNORE_INDEX",
    "PLAIN_HEAD_MODEL_TYPES",
    "SequenceLogProbs",
    "accepts_logits_to_keep",
    "cache_argument",
    "head_logprobs",
    "hidden_sequence_logprobs",
    "model_sequence_logprobs",
    "position_ids_from_mask",
    "scored_window",
    "sequence_logprobs",
    "split_lm_head",
]
