"""Batched greedy generation cut at stop strings, as lm-evaluation-harness ``generate_until``.

Prompts are encoded without special tokens (a chat-template prompt already holds its own),
left-truncated to ``max_length - max_new_tokens`` tokens, sorted by length (longest first, to
cut padding), left-padded and decoded greedily (argmax, as the harness's ``do_sample=False``)
with the KV cache. A row is finished at its first end-of-sequence token or once one of its stop
strings appears in its recent tokens; finished rows leave the batch (their cache rows are
dropped), so a batch costs only what its unfinished rows cost, and it ends when every row has
finished or ``max_new_tokens`` is reached.

Each row's text is then its new tokens up to the first end-of-sequence token, decoded with
special tokens skipped, and cut before the earliest stop string (the harness splits on each
``until`` string in turn, which is the same cut). As in the harness, the tokenizer's eos text is
also a stop string. Greedy decoding with masked padding and position ids that follow the mask
makes every row's text independent of the batch it shares (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mrpo.evals.loglik import left_pad, model_max_length, pad_token_id
from mrpo.logprobs import accepts_logits_to_keep, position_ids_from_mask


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


class StopOnStrings:
    """Tells whether a row's generated tokens show one of the stop strings.

    Only the row's last ``lookback`` tokens are decoded (cheap, once per row and step); a stop
    string that escapes this window merely costs extra tokens, because the final text is cut
    on the full decode.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        lengths = [len(tokenizer.encode(s, add_special_tokens=False)) for s in self.stops]
        self.lookback = max(lengths, default=1) + 2  # slack for merges across the boundary

    def __call__(self, new_tokens: Sequence[int]) -> bool:
        if not self.stops:
            return False
        text = self.tokenizer.decode(list(new_tokens[-self.lookback :]), skip_special_tokens=False)
        return any(stop in text for stop in self.stops)


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
    progress: str | None = None,
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
        progress: label of a progress bar over batches (stderr); None: no bar.
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
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
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
    """Greedy decoding of one left-padded batch with the KV cache, dropping finished rows.

    A row is finished at its first end-of-sequence token or stop string. Its cache entries and
    mask row are removed before the next step, so the batch costs what its unfinished rows
    cost (``model.generate`` keeps computing finished rows until the last one stops).
    """
    device = next(model.parameters()).device
    eos_ids = set(eos_token_ids(model, tokenizer))
    is_stop = StopOnStrings(tokenizer, stops)
    input_ids, attention_mask = left_pad(batch, pad_token_id(tokenizer))
    attention_mask = attention_mask.to(device)
    positions = position_ids_from_mask(attention_mask)  # (B, T): real tokens count from 0
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **kwargs,
    )
    cache = out.past_key_values
    positions = positions[:, -1:]  # (A, 1): the last position of each active row
    active = list(range(len(batch)))  # batch row of each row still decoding
    new_tokens: list[list[int]] = [[] for _ in batch]
    for step in range(max_new_tokens):
        next_tokens = out.logits[:, -1, :].argmax(-1)  # (A,)
        keep = []
        for a, token in enumerate(next_tokens.tolist()):
            row = new_tokens[active[a]]
            row.append(token)
            if token not in eos_ids and not is_stop(row):
                keep.append(a)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            next_tokens, attention_mask, positions = (
                next_tokens[index],
                attention_mask[index],
                positions[index],
            )
            active = [active[a] for a in keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], 1)
        positions = positions + 1
        out = model(
            input_ids=next_tokens[:, None],
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
    generations = []
    for ids, new in zip(batch, new_tokens, strict=True):
        end = next((t for t, token in enumerate(new) if token in eos_ids), len(new))
        text = str(tokenizer.decode(new[:end], skip_special_tokens=True))
        generations.append(Generation(cut_at_stops(text, stops), len(new), len(ids)))
    return generations
