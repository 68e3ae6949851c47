"""Batched log-likelihood of continuations given contexts, tokenized as lm-evaluation-harness.

A request is a ``(context, continuation)`` pair of strings; its score is
Σ_t log p(cont_t | context, cont_<t), summed over the continuation's tokens, in float32.

Tokenization follows the harness's ``HFLM._encode_pair``: trailing whitespace of the context is
moved to the start of the continuation; then ``context + continuation`` and ``context`` are
encoded without special tokens, and the continuation's tokens are the whole encoding minus the
first ``len(context tokens)`` ids. The model reads ``context_ids + continuation_ids`` (left-
truncated to ``max_length + 1`` tokens, last one dropped), exactly as the harness feeds it.

Speed:

- identical requests are scored once;
- requests are sorted by context length (longest first, as the harness), requests with the same
  context side by side, and left-padded into batches;
- the tokens that every row of a batch starts with (the question's context, or at least a
  common primer) run once; the KV cache of that prefix is repeated for the rows, which then
  only run their own remaining tokens (left padding sits between prefix and rest, masked);
- only the last ``max continuation length`` positions get logits (``logits_to_keep``), so a
  49k-token vocabulary does not cost a (B, T, V) tensor.

Padding is masked and position ids follow the mask, so a request's score does not depend on the
batch it lands in (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from mrpo.logprobs import accepts_logits_to_keep, cache_argument, position_ids_from_mask

TokenPair = tuple[Sequence[int], Sequence[int]]
# Shorter shared prefixes are not worth a separate forward pass.
MIN_SHARED_PREFIX = 16


@dataclass(frozen=True)
class LoglikResult:
    """Score of one request.

    Attributes:
        logprob: summed log-probability of the continuation tokens.
        is_greedy: whether every continuation token is the argmax of its distribution.
        num_tokens: number of continuation tokens.
    """

    logprob: float
    is_greedy: bool
    num_tokens: int


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split as the harness's ``_encode_pair``.

    An empty context becomes the single end-of-text token (the harness's ``loglikelihood``).

    Raises:
        ValueError: when the continuation encodes to no tokens.
    """
    if context == "":
        prefix = (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        )
        if prefix is None:
            raise ValueError("an empty context needs a tokenizer with an eos or bos token")
        ctx, cont = [prefix], tokenizer.encode(continuation, add_special_tokens=False)
    else:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = tokenizer.encode(context + continuation, add_special_tokens=False)
        ctx = tokenizer.encode(context, add_special_tokens=False)
        cont = whole[len(ctx) :]
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    return list(ctx), list(cont)


def loglikelihood(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    share_prefix: bool = True,
    progress: str | None = None,
) -> list[LoglikResult]:
    """Score ``(context, continuation)`` string pairs; results in request order.

    Tokenizes with :func:`encode_pair`; see :func:`score_token_pairs` for the arguments.
    """
    pairs = [encode_pair(tokenizer, ctx, cont) for ctx, cont in requests]
    return score_token_pairs(
        model,
        pairs,
        batch_size=batch_size,
        pad_token_id=pad_token_id(tokenizer),
        max_length=max_length,
        share_prefix=share_prefix,
        progress=progress,
    )


@torch.no_grad()
def score_token_pairs(
    model: PreTrainedModel,
    pairs: Sequence[TokenPair],
    *,
    batch_size: int = 16,
    pad_token_id: int = 0,
    max_length: int | None = None,
    share_prefix: bool = True,
    progress: str | None = None,
) -> list[LoglikResult]:
    """Score ``(context_ids, continuation_ids)`` pairs in batches; results in input order.

    Args:
        model: a causal LM returning ``.logits`` of shape (B, T, V).
        pairs: token id lists; every continuation non-empty, every context non-empty.
        batch_size: rows per forward pass.
        pad_token_id: id written into padding (masked out, never scored).
        max_length: model context size; longer inputs are left-truncated (default: the model
            config's ``max_position_embeddings`` when it has one).
        share_prefix: run the context tokens that all rows of a batch start with once, and
            the rows' remaining tokens on its KV cache (see the module doc).
        progress: label of a progress bar over batches (stderr); None: no bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_length = max_length or model_max_length(model)
    keys = [(tuple(ctx), tuple(cont)) for ctx, cont in pairs]
    for ctx, cont in keys:
        if not ctx or not cont:
            raise ValueError("every request needs a non-empty context and continuation")
        if max_length is not None and len(cont) > max_length:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length {max_length}")
    unique = list(dict.fromkeys(keys))
    # Longest contexts first (as the harness), and requests sharing a context side by side.
    order = sorted(range(len(unique)), key=lambda i: (-len(unique[i][0]), unique[i]))
    min_shared = MIN_SHARED_PREFIX if share_prefix else None
    scored: dict[tuple[tuple[int, ...], tuple[int, ...]], LoglikResult] = {}
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        batch = [unique[i] for i in order[start : start + batch_size]]
        results = _score_batch(model, batch, pad_token_id, max_length, min_shared)
        scored.update(zip(batch, results, strict=True))
    return [scored[key] for key in keys]


def _score_batch(
    model: PreTrainedModel,
    batch: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
    pad_token_id: int,
    max_length: int | None,
    min_shared: int | None,
) -> list[LoglikResult]:
    """Score one batch: an optional shared-prefix pass, then one left-padded forward pass."""
    device = next(model.parameters()).device
    conts = [list(cont) for _, cont in batch]
    inputs = []
    for ctx, continuation in batch:
        seq = list(ctx) + list(continuation)
        if max_length is not None:
            seq = seq[-(max_length + 1) :]
        inputs.append(seq[:-1])  # the last token is predicted, never read
    keep = max(len(c) for c in conts)
    # The prefix may only cover tokens no row scores: a row's last len(cont) inputs are scored.
    limits = [len(x) - len(c) for x, c in zip(inputs, conts, strict=True)]
    shared = shared_prefix_length(inputs, limits)
    cache = None
    if min_shared is not None and shared >= min_shared:
        cache = prefix_cache(model, inputs[0][:shared], len(batch))
    if cache is None:
        shared = 0
    input_ids, suffix_mask = left_pad([x[shared:] for x in inputs], pad_token_id)  # (B, S)
    attention_mask = torch.cat([torch.ones(len(batch), shared, dtype=torch.long), suffix_mask], 1)
    logits = forward_logits(
        model, input_ids.to(device), attention_mask.to(device), keep, past_key_values=cache
    )  # (B, keep, V)
    targets = torch.zeros((len(batch), keep), dtype=torch.long)  # right-aligned continuations
    target_mask = torch.zeros((len(batch), keep), dtype=torch.bool)
    for row, cont in enumerate(conts):
        targets[row, keep - len(cont) :] = torch.tensor(cont)
        target_mask[row, keep - len(cont) :] = True
    targets, target_mask = targets.to(device), target_mask.to(device)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, keep)
    total = (token_lp * target_mask).sum(-1)
    greedy = ((logprobs.argmax(-1) == targets) | ~target_mask).all(-1)
    return [
        LoglikResult(float(total[i]), bool(greedy[i]), len(conts[i])) for i in range(len(batch))
    ]


def shared_prefix_length(rows: Sequence[Sequence[int]], limits: Sequence[int]) -> int:
    """Length of the longest common prefix of ``rows``, at most ``min(limits)``."""
    longest = min([*limits, *(len(r) for r in rows)])
    first = rows[0]
    for t in range(longest):
        if any(r[t] != first[t] for r in rows):
            return t
    return longest


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists: (input_ids, attention_mask), both (B, max length) int64."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            input_ids[i, width - len(r) :] = torch.tensor(list(r))
            attention_mask[i, width - len(r) :] = 1
    return input_ids, attention_mask


def prefix_cache(model: PreTrainedModel, prefix: Sequence[int], batch_size: int) -> Any:
    """KV cache of ``prefix`` (run once), repeated for ``batch_size`` rows; None if unsupported."""
    device = next(model.parameters()).device
    cache = DynamicCache()
    kwargs: dict[str, Any] = {
        "input_ids": torch.tensor([list(prefix)], device=device),
        cache_argument(model): cache,
    }
    if accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = 1  # only the cache is needed
    model(**kwargs, use_cache=True)
    if cache.get_seq_length() != len(prefix):  # the model kept no cache (not a causal LM's)
        return None
    cache.batch_repeat_interleave(batch_size)
    return cache


def forward_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep: int,
    past_key_values: Any = None,
) -> torch.Tensor:
    """Logits of the last ``keep`` positions, (B, keep, V), for a left-padded batch.

    ``attention_mask`` covers the cached positions followed by ``input_ids``'s. Position ids
    count real tokens only, so a padded row sees the same positions as unpadded.
    """
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask)[:, -input_ids.shape[1] :],
    }
    if past_key_values is not None:
        kwargs[cache_argument(model)] = past_key_values
    if accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits
    return logits[:, -keep:, :]


def model_max_length(model: PreTrainedModel) -> int | None:
    """The model's context size from its config (``max_position_embeddings``, ...), if known."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, else its unk, else its eos id (the harness's fallback order)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("tokenizer has no pad, unk or eos token to pad batches with")
