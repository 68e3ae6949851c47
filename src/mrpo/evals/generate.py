"""Batched greedy generation cut at stop strings, as lm-evaluation-harness ``generate_until``.

Prompts are encoded without special tokens (a chat-template prompt already holds its own),
left-truncated to ``max_length - max_new_tokens`` tokens, sorted by length (longest first, to
cut padding), left-padded and decoded greedily with the KV cache by ``model.generate``. A
stopping criterion marks a row finished once one of its stop strings appears in its recent
tokens, and the batch ends when every row has stopped or emitted an end-of-sequence token.

Each row's text is then its new tokens up to the first end-of-sequence token, decoded with
special tokens skipped, and cut before the earliest stop string (the harness splits on each
``until`` string in turn, which is the same cut). As in the harness, the tokenizer's eos text is
also a stop string. Greedy decoding with masked padding makes every row's text independent of
the batch it shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from mrpo.evals.loglik import left_pad, model_max_length, pad_token_id


@dataclass(frozen=True)
class Generation:
    """One generated continuation.

    Attributes:
        text: the decoded continuation, cut before the first stop string.
        num_tokens: tokens generated for this row before it stopped (eos or stop string
            detection included; padding after that excluded).
        prompt_tokens: prompt length in tokens after truncation.
    """

    text: str
    num_tokens: int
    prompt_tokens: int


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """Return ``text`` up to (not including) the earliest occurrence of any non-empty stop."""
    cut = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


class StopOnStrings(StoppingCriteria):
    """Marks a row finished once a stop string occurs in its last ``lookback`` new tokens.

    Only the recent tokens are decoded each step (cheap); a stop string that escapes this
    window merely costs extra tokens, because the final text is cut on the full decode.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], prompt_width: int
    ) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_width = prompt_width
        lengths = [len(tokenizer.encode(s, add_special_tokens=False)) for s in self.stops]
        self.lookback = max(lengths, default=1) + 2  # slack for merges across the boundary

    def __call__(
        self, input_ids: torch.LongTensor, scores: object, **kwargs: object
    ) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_width :][:, -self.lookback :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=False)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-sequence ids: the tokenizer's plus those of the model's generation config."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos):
        for token in value if isinstance(value, list | tuple) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


def generate_until(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    stop: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[Generation]:
    """Greedy continuations of ``prompts``, each cut at its first stop string; in prompt order.

    Args:
        model: a causal LM supporting ``generate``.
        tokenizer: its tokenizer (prompts are encoded without adding special tokens).
        prompts: the full prompt texts.
        stop: stop strings (the tokenizer's eos text is added).
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per ``generate`` call.
        max_length: model context size (default: from the model config); prompts are
            left-truncated to ``max_length - max_new_tokens`` tokens.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}"
        )
    max_length = max_length or model_max_length(model)
    budget = None if max_length is None else max_length - max_new_tokens
    if budget is not None and budget < 1:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room in max_length {max_length}"
        )
    stops = list(stop)
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    encoded = [ids[-budget:] if budget is not None else ids for ids in encoded]
    if any(not ids for ids in encoded):
        raise ValueError("every prompt must encode to at least one token")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        outputs = _generate_batch(
            model, tokenizer, [encoded[i] for i in rows], stops, max_new_tokens
        )
        for i, generation in zip(rows, outputs, strict=True):
            results[i] = generation
    return [r for r in results if r is not None]


@torch.no_grad()
def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: Sequence[Sequence[int]],
    stops: Sequence[str],
    max_new_tokens: int,
) -> list[Generation]:
    device = next(model.parameters()).device
    pad_id = pad_token_id(tokenizer)
    eos_ids = eos_token_ids(model, tokenizer)
    input_ids, attention_mask = left_pad(batch, pad_id)
    width = input_ids.shape[1]
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_ids or None,
    )
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=config,
        stopping_criteria=StoppingCriteriaList([StopOnStrings(tokenizer, stops, width)]),
    )
    generations = []
    for row, ids in enumerate(batch):
        new = out[row, width:].tolist()
        end = next((t for t, token in enumerate(new) if token in eos_ids), len(new))
        text = tokenizer.decode(new[:end], skip_special_tokens=True)
        # Rows that stopped early were padded while others went on; count up to the stop.
        generated = _generated_length(new, end, pad_id, eos_ids)
        generations.append(Generation(cut_at_stops(text, stops), generated, len(ids)))
    return generations


def _generated_length(new: Sequence[int], end: int, pad_id: int, eos_ids: Sequence[int]) -> int:
    """Tokens a row really generated: through its eos, else up to trailing padding."""
    if end < len(new):
        return end + 1
    length = len(new)
    if pad_id not in eos_ids:
        while length > 0 and new[length - 1] == pad_id:
            length -= 1
    return length
