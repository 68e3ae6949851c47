"""Sequence log-probs of packed rows (:mod:`mrpo.logprobs.packed_rows`).

:func:`packed_sequence_logprobs` runs a model on :class:`~mrpo.logprobs.packed_rows.PackedRows`
with the attention mask its implementation takes (:mod:`mrpo.logprobs.attention`) and reduces
the scored tokens per sequence; the values equal those of the padded layout
(:func:`~mrpo.logprobs.sequence.model_sequence_logprobs`) to float rounding, since every token
sees exactly the tokens it would see in a row of its own, at the same positions.
"""

from __future__ import annotations

import torch

from mrpo.logprobs.attention import packed_mask_builder
from mrpo.logprobs.fused_head import DEFAULT_CHUNK_TOKENS, head_logprobs, split_lm_head
from mrpo.logprobs.packed_rows import PackedRows
from mrpo.logprobs.sequence import SequenceLogProbs, _check_vocab_range, _token_logps
from mrpo.logprobs.shared import owner_ranks


def packed_sequence_logprobs(
    model: torch.nn.Module,
    packed: PackedRows,
    *,
    average: bool = False,
    fused_head: bool = True,
    head_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    shared_tokens: torch.Tensor | None = None,
) -> SequenceLogProbs:
    """Run a causal LM on packed rows and reduce the log-probs of each scored sequence.

    With ``fused_head`` and a model whose head :func:`~mrpo.logprobs.split_lm_head` accepts,
    only the predicting hidden states go through the LM head (no logits tensor); otherwise
    the model's logits at every position are made and the predicting ones gathered.

    Args:
        model: a causal LM that :func:`~mrpo.logprobs.attention.packed_mask_builder` accepts
            (or a peft wrapper of one).
        packed: the rows: R x T tokens holding S sequences, M scored tokens.
        average: mean per scored token instead of the sum.
        fused_head: take the fused LM-head path when the model allows it.
        head_chunk_tokens: scored tokens per LM-head tile on the fused path (>= 1).
        shared_tokens: (S,) int64, also reduce each sequence's first ``shared_tokens`` scored
            tokens into ``shared_logps`` (None: not).

    Returns:
        ``SequenceLogProbs`` (S,) float32 log-probs and (S,) int64 token counts; a sequence
        without scored tokens has log-prob 0.

    Raises:
        ValueError: the model cannot take packed rows.
    """
    build = packed_mask_builder(model)
    if build is None:
        raise ValueError(
            f"{type(model).__name__} cannot take packed rows (its family or attention is not "
            "in mrpo.logprobs.attention's allow-list); use the padded layout"
        )
    param = next(model.parameters())
    inputs = {
        "input_ids": packed.input_ids,
        "attention_mask": build(packed.segment, packed.branch, param.dtype),
        "position_ids": packed.position_ids,
        "use_cache": False,
    }
    parts = split_lm_head(model) if fused_head else None
    if parts is not None:
        backbone, head = parts
        hidden = backbone(**inputs)[0]
        _check_vocab_range(packed.targets, head.weight.shape[0])
        predicting = hidden.reshape(-1, hidden.shape[-1])[packed.predictor]
        token_logps = head_logprobs(
            predicting, head.weight, head.bias, packed.targets, chunk_tokens=head_chunk_tokens
        )
    else:
        logits = model(**inputs).logits
        _check_vocab_range(packed.targets, logits.shape[-1])
        predicting = logits.reshape(-1, logits.shape[-1])[packed.predictor]
        token_logps = _token_logps(predicting[None], packed.targets[None])[0]
    return reduce_by_owner(token_logps, packed.owner, packed.num_sequences, average, shared_tokens)


def reduce_by_owner(
    token_logps: torch.Tensor,
    owner: torch.Tensor,
    num_sequences: int,
    average: bool,
    shared_tokens: torch.Tensor | None = None,
) -> SequenceLogProbs:
    """Per-sequence sums (or means) of (M,) float32 token log-probs owned by (M,) sequence ids.

    Given (S,) ``shared_tokens``, also the sums of each sequence's first ``shared_tokens``
    tokens (in listed order, :func:`~mrpo.logprobs.shared.owner_ranks`), divided by the
    sequence's full count when ``average``.

    Returns:
        ``SequenceLogProbs`` of S = ``num_sequences`` rows; a sequence without tokens gets 0.
    """
    total = token_logps.new_zeros(num_sequences).index_add(0, owner, token_logps)
    num_tokens = torch.bincount(owner, minlength=num_sequences)
    shared = None
    if shared_tokens is not None:
        prefix = owner_ranks(owner, num_sequences) < shared_tokens.to(owner.device)[owner]
        kept = torch.where(prefix, token_logps, token_logps.new_zeros(()))
        shared = token_logps.new_zeros(num_sequences).index_add(0, owner, kept)
    if average:
        count = num_tokens.clamp(min=1).to(total.dtype)
        total = total / count
        shared = None if shared is None else shared / count
    return SequenceLogProbs(logps=total, num_tokens=num_tokens, shared_logps=shared)
