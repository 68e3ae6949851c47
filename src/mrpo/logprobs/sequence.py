"""Sequence log-probabilities from a causal LM: the one place that shifts and masks.

Every objective, reference score and evaluation in the project reduces token log-probs over a
span of a sequence. The convention, shared with ``PreferenceBatch.labels``:

- ``labels`` has the shape of ``input_ids`` and is *unshifted*: ``labels[n, t]`` is the token at
  position t if it is scored, and ``IGNORE_INDEX`` (-100) on prompt and padding positions.
- The logits at position t predict the token at position t + 1, so the first position of a row
  is never scored.

ℓ(y) = Σ_t log p(labels[t] | tokens < t) over the scored positions, or its mean per token when
``average`` is set (``length_normalize`` in the configs).

From a model, the log-probs come either from its logits (:func:`sequence_logprobs`) or, for
models whose logits are ``lm_head(last hidden state)``, from the hidden states through the
fused LM head of :mod:`mrpo.logprobs.fused_head` (:func:`hidden_sequence_logprobs`), which never
makes the logits tensor; both give the same values.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from mrpo.logprobs.fused_head import DEFAULT_CHUNK_TOKENS, head_logprobs, split_lm_head, unwrapped
from mrpo.logprobs.shared import shared_prefix_mask

IGNORE_INDEX = -100
"""Label value of positions that are not scored (prompt and padding)."""


class SequenceLogProbs(NamedTuple):
    """Per-sequence log-probabilities.

    Attributes:
        logps: (N,) float32, the sum (or the per-token mean) of the scored token log-probs.
        num_tokens: (N,) int64, the number of scored tokens of each row.
        shared_logps: (N,) float32, the log-probs of each row's first ``shared_tokens``
            scored tokens (reduced as ``logps``: the sum, or divided by the row's full
            ``num_tokens``), when the shared lengths were given (LD-DPO,
            :mod:`mrpo.logprobs.shared`); None otherwise.
    """

    logps: torch.Tensor
    num_tokens: torch.Tensor
    shared_logps: torch.Tensor | None = None


def _token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position in float32: (n, t, V) logits, (n, t) labels -> (n, t).

    ``gather - logsumexp`` gives the same numbers as ``log_softmax`` followed by a gather, but
    never holds a second vocabulary-sized tensor of log-probs.
    """
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _validate(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int | None) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (N, T, V), got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape (N, T) = {tuple(logits.shape[:2])} to match the logits, "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows or None, got {chunk_size}")
    _check_vocab_range(labels[labels != IGNORE_INDEX], logits.shape[-1])


def _check_vocab_range(scored: torch.Tensor, vocab_size: int) -> None:
    if scored.numel() and (scored.min() < 0 or scored.max() >= vocab_size):
        raise ValueError(
            f"labels must be token ids in [0, {vocab_size}) or {IGNORE_INDEX}, "
            f"got values in [{int(scored.min())}, {int(scored.max())}]"
        )


def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = False,
    chunk_size: int | None = None,
    shared_tokens: torch.Tensor | None = None,
) -> SequenceLogProbs:
    """Sum (or average) the log-probs of the labelled tokens of each sequence.

    The math runs in float32 whatever the dtype of ``logits``, and is differentiable with
    respect to ``logits``.

    Args:
        logits: (N, T, V) next-token logits of a causal LM, any float dtype.
        labels: (N, T) int64 token ids, ``IGNORE_INDEX`` (-100) where not scored; unshifted
            (see the module docstring).
        average: return the mean log-prob per scored token instead of the sum.
        chunk_size: process this many rows at a time, so that at most ``chunk_size x T x V``
            float32 values are alive at once (None: all rows together). When ``logits`` are not
            float32 and need a gradient, each chunk is recomputed in the backward pass instead
            of keeping its float32 copy.
        shared_tokens: (N,) int64, also reduce each row's first ``shared_tokens`` scored
            tokens into ``shared_logps`` (None: not).

    Returns:
        ``SequenceLogProbs`` with ``logps`` (N,) float32 and ``num_tokens`` (N,) int64. A row
        with no scored token has ``logps`` 0 for both reductions (never NaN) and
        ``num_tokens`` 0.
    """
    _validate(logits, labels, chunk_size)
    # Shift: the logits at t score the label at t + 1.
    logits = logits[:, :-1]
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    # Ignored positions gather an arbitrary valid id (0); their values are discarded below.
    safe_labels = labels.masked_fill(~mask, 0).long()

    step = chunk_size or max(logits.shape[0], 1)
    recompute = logits.requires_grad and logits.dtype != torch.float32 and chunk_size is not None
    pieces = []
    for start in range(0, logits.shape[0], step):
        rows = slice(start, start + step)
        if recompute:
            piece = checkpoint(_token_logps, logits[rows], safe_labels[rows], use_reentrant=False)
        else:
            piece = _token_logps(logits[rows], safe_labels[rows])
        pieces.append(piece)
    token_logps = torch.cat(pieces) if pieces else logits.new_zeros(labels.shape).float()

    # where (not multiply) so that a non-finite value at an ignored position cannot leak in.
    token_logps = torch.where(mask, token_logps, token_logps.new_zeros(()))
    return reduce_rows(token_logps, mask, average, shared_tokens)


def reduce_rows(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    average: bool,
    shared_tokens: torch.Tensor | None = None,
) -> SequenceLogProbs:
    """Row sums (or means) of (N, T) float32 token log-probs that are 0 where ``mask`` is off.

    Args:
        token_logps: (N, T) float32, 0 where ``mask`` is off.
        mask: (N, T) bool, the scored positions.
        average: divide each row's sums by its scored token count (at least 1).
        shared_tokens: (N,) int64: also sum each row's first ``shared_tokens`` scored tokens
            (:func:`~mrpo.logprobs.shared.shared_prefix_mask`) into ``shared_logps``.

    Returns:
        ``SequenceLogProbs`` of the N rows.
    """
    total = token_logps.sum(dim=-1)
    num_tokens = mask.sum(dim=-1, dtype=torch.int64)
    shared = None
    if shared_tokens is not None:
        prefix = shared_prefix_mask(mask, shared_tokens)
        shared = torch.where(prefix, token_logps, token_logps.new_zeros(())).sum(dim=-1)
    if average:
        # clamp: a row without scored tokens has total 0, so its mean is 0 rather than 0/0.
        count = num_tokens.clamp(min=1).to(total.dtype)
        total = total / count
        shared = None if shared is None else shared / count
    return SequenceLogProbs(logps=total, num_tokens=num_tokens, shared_logps=shared)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) position of each token among the real tokens of its row, 0 on left padding.

    transformers numbers positions 0..T-1 regardless of padding, which shifts the rotary
    positions of a left-padded row; counting only real tokens makes left- and right-padded
    batches give the same log-probs.
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def model_sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = False,
    chunk_size: int | None = None,
    fused_head: bool = True,
    head_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    shared_tokens: torch.Tensor | None = None,
) -> SequenceLogProbs:
    """Run a causal LM on a padded batch and reduce the log-probs of its labelled tokens.

    With ``fused_head`` and a model :func:`~mrpo.logprobs.split_lm_head` accepts, the backbone's
    last hidden states of the scored positions go through the LM head ``head_chunk_tokens`` at a
    time (:func:`~mrpo.logprobs.head_logprobs`): no logits tensor is ever made. Otherwise the
    model's own forward makes logits, and models whose forward takes ``logits_to_keep``
    (transformers causal LMs) make them only for the last :func:`scored_window` positions.

    Args:
        model: a causal LM (a transformers model or a peft wrapper of one).
        input_ids: (N, T) int64 token ids, left- or right-padded.
        attention_mask: (N, T) 1 on real tokens, 0 on padding.
        labels: (N, T) int64, ``IGNORE_INDEX`` on positions that are not scored.
        average: mean per scored token instead of the sum.
        chunk_size: see ``sequence_logprobs`` (logits path only).
        fused_head: take the fused LM-head path when the model allows it.
        head_chunk_tokens: scored tokens per LM-head tile on the fused path (>= 1).
        shared_tokens: see :func:`sequence_logprobs` (the same forward pass gives both sums).

    Returns:
        ``SequenceLogProbs`` (N,) float32 log-probs and (N,) int64 token counts. Gradients
        flow to the model's trainable parameters when grad mode is on.
    """
    if input_ids.shape != attention_mask.shape or input_ids.shape != labels.shape:
        raise ValueError(
            "input_ids, attention_mask and labels must have the same (N, T) shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(labels.shape)}"
        )
    parts = split_lm_head(model) if fused_head else None
    if parts is not None:
        return _fused_head_logprobs(
            *parts, input_ids, attention_mask, labels, average, head_chunk_tokens, shared_tokens
        )
    return _logits_logprobs(
        model, input_ids, attention_mask, labels, average, chunk_size, shared_tokens
    )


def _fused_head_logprobs(
    backbone: torch.nn.Module,
    head: torch.nn.Linear,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    average: bool,
    chunk_tokens: int,
    shared_tokens: torch.Tensor | None,
) -> SequenceLogProbs:
    """``model_sequence_logprobs`` through the backbone and :func:`hidden_sequence_logprobs`."""
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )[0]
    return hidden_sequence_logprobs(
        hidden,
        head.weight,
        head.bias,
        labels,
        average=average,
        chunk_tokens=chunk_tokens,
        shared_tokens=shared_tokens,
    )


def hidden_sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    average: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    shared_tokens: torch.Tensor | None = None,
) -> SequenceLogProbs:
    """``sequence_logprobs`` of the logits ``hidden @ weight.T + bias``, never made whole.

    Only the positions that score a label go through the LM head, ``chunk_tokens`` at a time
    (:func:`mrpo.logprobs.fused_head.head_logprobs`).

    Args:
        hidden: (N, T, H) last hidden states of a causal LM's backbone.
        weight: (V, H) LM-head weight.
        bias: (V,) LM-head bias, or None.
        labels: (N, T) int64, ``IGNORE_INDEX`` where not scored (unshifted).
        average: mean per scored token instead of the sum.
        chunk_tokens: scored tokens per LM-head tile (>= 1).
        shared_tokens: see :func:`sequence_logprobs`.

    Returns:
        ``SequenceLogProbs`` as :func:`sequence_logprobs`.
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be (N, T, H) and labels (N, T), got {tuple(hidden.shape)} and "
            f"{tuple(labels.shape)}"
        )
    # Shift: the hidden state at t scores the label at t + 1.
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    targets = labels[mask]
    _check_vocab_range(targets, weight.shape[0])
    picked = head_logprobs(hidden[:, :-1][mask], weight, bias, targets, chunk_tokens=chunk_tokens)
    # masked_scatter keeps the rows tied to the graph even when no token is scored.
    token_logps = picked.new_zeros(mask.shape).masked_scatter(mask, picked)
    return reduce_rows(token_logps, mask, average, shared_tokens)


def _logits_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    average: bool,
    chunk_size: int | None,
    shared_tokens: torch.Tensor | None,
) -> SequenceLogProbs:
    """``model_sequence_logprobs`` through the model's own logits (the scored window's)."""
    width = input_ids.shape[1]
    keep = scored_window(labels) if accepts_logits_to_keep(model) else width
    # The LM head and the vocabulary-sized log-softmax then run only on the positions whose
    # logits score a label: from the one before the first scored label (in any row) to the end.
    extra = {"logits_to_keep": keep} if keep < width else {}
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **extra,
    )
    # The window drops leading unscored columns only: each row's scored tokens keep their order.
    return sequence_logprobs(
        outputs.logits,
        labels[:, width - keep :],
        average=average,
        chunk_size=chunk_size,
        shared_tokens=shared_tokens,
    )


def scored_window(labels: torch.Tensor) -> int:
    """How many trailing positions of a batch have logits that score a label.

    Args:
        labels: (N, T) int64, ``IGNORE_INDEX`` where not scored (unshifted).

    Returns:
        ``T - f + 1`` where ``f`` is the first column with a scored label in any row (the
        logits at ``f - 1`` predict it); at least 1, and ``T`` when column 0 is scored.
    """
    columns = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if columns.numel() == 0:
        return 1
    return labels.shape[1] - max(int(columns[0, 0]) - 1, 0)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (logits of the last positions only)."""
    # A peft wrapper forwards extra keyword arguments to the model it wraps.
    return "logits_to_keep" in inspect.signature(unwrapped(model).forward).parameters


def cache_argument(model: torch.nn.Module) -> str:
    """The name under which the model's forward takes a KV cache: ``cache`` (transformers 5,
    where ``past_key_values`` is deprecated) or ``past_key_values`` (earlier versions)."""
    parameters = inspect.signature(unwrapped(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
