"""Batched greedy generation cut at stop strings, as lm-evaluation-harness ``generate_until``.

Prompts are encoded without special tokens (a chat-template prompt already holds its own) and
left-truncated to ``max_length - max_new_tokens`` tokens. Decoding is greedy (argmax, as the
harness's ``do_sample=False``) with continuous batching over ``batch_size`` slots:

- each prompt is read on its own, longest first, without padding (so causal attention takes
  the kernel's ``is_causal`` path, and the prompt's numbers are those of a batch of one, as in
  the harness), and its keys and values join the slots' cache
  (:class:`~mrpo.evals.slots.SlotCache`);
- every decoding step runs the last token of every active sequence and up to ``draft_tokens``
  tokens guessed from the sequence's own text (:mod:`mrpo.evals.drafts`); a guess is kept while
  it equals the model's greedy choice, so a step adds one or more tokens to each sequence and the
  text is that of one token at a time. New keys and values are written in place (the default
  cache copies itself at every step);
- a sequence is finished at its first end-of-sequence token, once one of its stop strings
  appears in its recent tokens, or after ``max_new_tokens`` tokens (tokens are checked one by
  one, also those a step kept together); its slot is taken at once by the next prompt, so steps
  run with full slots instead of dwindling to a batch's last row.

Each row's text is then its new tokens up to the first end-of-sequence token, decoded with
special tokens skipped, and cut before the earliest stop string (the harness splits on each
``until`` string in turn, which is the same cut). As in the harness, the tokenizer's eos text is
also a stop string. A sequence's tokens do not depend on which others share its steps (masked
attention, each sequence's own positions), up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from mrpo.evals.drafts import NgramDrafter
from mrpo.evals.loglik import model_max_length
from mrpo.evals.slots import SlotCache, cached_keys_values, check_full_attention, slot_attention
from mrpo.logprobs import accepts_logits_to_keep, cache_argument, split_lm_head

DRAFT_TOKENS = 8
"""Default most guessed tokens per sequence and decoding step (:mod:`mrpo.evals.drafts`)."""
STEP_TOKENS = 32
"""Most tokens one decoding step runs in all: beyond about this many a CPU step stops being
bound by reading the weights, and guesses that fail start to cost compute."""


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
    draft_tokens: int = DRAFT_TOKENS,
    progress: str | None = None,
) -> list[Generation]:
    """Greedy continuations of ``prompts``, each cut at its first stop string; in prompt order.

    Args:
        model: a causal LM (transformers), in eval mode.
        tokenizer: its tokenizer (prompts are encoded without adding special tokens).
        prompts: the full prompt texts.
        stop: stop strings (the tokenizer's eos text is added).
        max_new_tokens: generation budget per prompt.
        batch_size: sequences decoded together (the slots).
        max_length: model context size (default: from the model config); prompts are
            left-truncated to ``max_length - max_new_tokens`` tokens.
        draft_tokens: most tokens guessed per sequence and step (0: one token per step); a
            step runs at most ``STEP_TOKENS`` tokens in all, so full slots guess fewer.
        progress: label of a progress bar over prompts (stderr); None: no bar.
    """
    if batch_size < 1 or max_new_tokens < 1 or draft_tokens < 0:
        raise ValueError(
            f"batch_size and max_new_tokens must be >= 1 and draft_tokens >= 0, got "
            f"{batch_size}, {max_new_tokens}, {draft_tokens}"
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
    # Longest first: the first prompt sizes the slot buffers, which then rarely grow.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    check_full_attention(model.config)
    decoder = _Decoder(
        model, tokenizer, stops, max_new_tokens, batch_size, draft_tokens, max_length
    )
    results: list[Generation | None] = [None] * len(encoded)
    bar = tqdm(total=len(order), desc=progress, unit="prompt", disable=progress is None)
    with bar, slot_attention(model):
        for position, generation in decoder.run([encoded[i] for i in order]):
            results[order[position]] = generation
            bar.update()
    return [r for r in results if r is not None]


@dataclass
class _Sequence:
    """A prompt being decoded: its place in the queue, prompt length, new tokens and the
    lookup of its text that drafts guesses (None: no guessing)."""

    index: int
    prompt_tokens: int
    tokens: list[int]
    drafter: NgramDrafter | None

    def add(self, token: int) -> None:
        self.tokens.append(token)
        if self.drafter is not None:
            self.drafter.append(token)


class _Decoder:
    """Continuous greedy decoding of a queue of prompts over ``slots`` (see the module doc)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        stops: Sequence[str],
        max_new_tokens: int,
        slots: int,
        draft_tokens: int,
        max_length: int | None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stops = stops
        self.max_new_tokens = max_new_tokens
        self.slots = slots
        self.draft_tokens = draft_tokens
        self.last_position = None if max_length is None else max_length - 1
        self.eos_ids = set(eos_token_ids(model, tokenizer))
        self.is_stop = StopOnStrings(tokenizer, stops)
        self.device = next(model.parameters()).device
        self.cache_arg = cache_argument(model)
        self.keep_last = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        # Decoding steps apply the head themselves where the logits are plainly the head's.
        self.split = split_lm_head(model)
        self.backbone_cache_arg = cache_argument(self.split[0]) if self.split else ""

    @torch.no_grad()
    def run(self, prompts: Sequence[Sequence[int]]) -> Iterator[tuple[int, Generation]]:
        """Yield ``(position in prompts, generation)`` as each sequence finishes."""
        queue = list(enumerate(prompts))[::-1]  # popped from the end: first prompt first
        cache: SlotCache | None = None
        active: list[_Sequence] = []  # active[r] is decoded in row r of the cache
        while queue or active:
            while queue and len(active) < self.slots:
                index, ids = queue.pop()
                first, prompt_cache = self._read_prompt(ids)
                drafter = NgramDrafter([*ids, first]) if self.draft_tokens else None
                sequence = _Sequence(index, len(ids), [first], drafter)
                if self._finished(sequence):
                    yield index, self._generation(sequence)
                    continue
                if cache is None:
                    cache = self._new_cache(prompt_cache[0][0], len(ids))
                cache.insert(prompt_cache)
                active.append(sequence)
            if not active:
                continue
            assert cache is not None  # a sequence became active, so the cache exists
            drafts = self._drafts(active)
            inputs = [[s.tokens[-1], *d] for s, d in zip(active, drafts, strict=True)]
            choices = self._step(cache, inputs)
            kept, done = [], []
            for row, sequence in enumerate(active):
                count, finished = self._keep(sequence, drafts[row], choices[row])
                kept.append(count)
                if finished:
                    done.append(row)
            cache.advance(kept)
            for row in reversed(done):  # the last row moves into a freed one: go backwards
                yield active[row].index, self._generation(active[row])
                cache.remove(row)
                active[row] = active[-1]
                active.pop()

    def _keep(
        self, sequence: _Sequence, draft: Sequence[int], choices: Sequence[int]
    ) -> tuple[int, bool]:
        """Add a step's tokens to ``sequence``: the model's choice after its last token, and
        after each guess that was the model's own choice too (``choices[i]`` follows input
        i). Returns the number of inputs whose keys stay cached, and whether it finished;
        tokens are added one by one, so a sequence ends where one token per step would."""
        count = 1 + next((i for i, t in enumerate(draft) if t != choices[i]), len(draft))
        for token in choices[:count]:
            sequence.add(token)
            if self._finished(sequence):
                return count, True
        return count, False

    def _drafts(self, active: Sequence[_Sequence]) -> list[list[int]]:
        """Each active sequence's guessed next tokens: at most ``draft_tokens``, at most what
        its budget has left, and at most ``STEP_TOKENS`` tokens in the step in all."""
        limit = min(self.draft_tokens, STEP_TOKENS // len(active) - 1)
        return [
            s.drafter.draft(min(limit, self.max_new_tokens - len(s.tokens) - 1))
            if s.drafter is not None and limit > 0
            else []
            for s in active
        ]

    def _read_prompt(
        self, ids: Sequence[int]
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The prompt's greedy next token and its per-layer (1, heads, n, dim) keys and values."""
        prompt_cache = DynamicCache()
        out = self.model(
            input_ids=torch.tensor([list(ids)], device=self.device),
            use_cache=True,
            **{self.cache_arg: prompt_cache},
            **self.keep_last,
        )
        return int(out.logits[0, -1].argmax()), cached_keys_values(prompt_cache)

    def _new_cache(self, keys: torch.Tensor, prompt_tokens: int) -> SlotCache:
        config = self.model.config
        return SlotCache(
            num_layers=int(config.num_hidden_layers),
            kv_heads=int(keys.shape[1]),
            head_dim=int(keys.shape[-1]),
            slots=self.slots,
            capacity=prompt_tokens + self.max_new_tokens + self.draft_tokens + 1,
            dtype=keys.dtype,
            device=keys.device,
        )

    def _step(self, cache: SlotCache, inputs: Sequence[Sequence[int]]) -> list[list[int]]:
        """One decoding step: per active row, its tokens to run (the last one first); returns
        the model's greedy choice after each of them, (active, longest input) as lists."""
        query = max(len(tokens) for tokens in inputs)
        # Shorter rows repeat their last token: the extra choices are never kept.
        rows = [[*tokens, *[tokens[-1]] * (query - len(tokens))] for tokens in inputs]
        positions, mask = cache.begin_step(query)
        if self.last_position is not None:  # only the padding of a row near its end gets here
            positions = positions.clamp(max=self.last_position)
        model_inputs = {
            "input_ids": torch.tensor(rows, device=self.device),
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": True,
        }
        return self._greedy_choices(model_inputs, cache).tolist()

    def _greedy_choices(self, model_inputs: dict[str, Any], cache: SlotCache) -> torch.Tensor:
        """(rows, query) int64 argmax of the logits at every position of a decoding step."""
        if self.split is None:
            return self.model(**model_inputs, **{self.cache_arg: cache}).logits.argmax(-1)
        backbone, head = self.split
        hidden = backbone(**model_inputs, **{self.backbone_cache_arg: cache}).last_hidden_state
        # (V, H) @ (H, tokens): on the CPU this orientation of the head's matmul took half the
        # time of F.linear's (tokens, H) @ (H, V) at 16-64 tokens (SmolLM2-135M: 27 against
        # 47 ms at 32), with the same logits.
        logits = torch.mm(head.weight, hidden.reshape(-1, hidden.shape[-1]).t())
        if head.bias is not None:
            logits = logits + head.bias[:, None]
        return logits.argmax(0).view(hidden.shape[:2])

    def _finished(self, sequence: _Sequence) -> bool:
        token = sequence.tokens[-1]
        return (
            token in self.eos_ids
            or len(sequence.tokens) >= self.max_new_tokens
            or self.is_stop(sequence.tokens)
        )

    def _generation(self, sequence: _Sequence) -> Generation:
        new = sequence.tokens
        end = next((t for t, token in enumerate(new) if token in self.eos_ids), len(new))
        text = str(self.tokenizer.decode(new[:end], skip_special_tokens=True))
        return Generation(cut_at_stops(text, self.stops), len(new), sequence.prompt_tokens)
