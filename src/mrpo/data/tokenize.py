"""Tokenize preference pairs with any tokenizer and chat template.

The same functions serve the policy and every reference model (each with its own tokenizer,
chat template and system prompt): the *text* of a pair is rendered and tokenized per model.

Rendering. The prompt messages (with ``system_prompt`` inserted as, or replacing, the first
system message) are rendered with ``apply_chat_template(..., add_generation_prompt=True)``. A
response is rendered as the whole conversation with the response as a final assistant message,
minus the rendered prompt text; this keeps the template's own end-of-turn text (``<|im_end|>\\n``,
``</s>\\n``, ...). When the template renders nothing but whitespace after the response text, the
tokenizer's eos token is appended so that the model still learns to stop. Prompt and responses
are tokenized separately with ``add_special_tokens=False`` (the template carries the special
tokens), so the response span is exact.

Truncation rule. With P prompt tokens and L = the longer response's tokens, nothing changes
when ``P + L <= max_length``. Otherwise:

1. the prompt keeps its END: its last ``max_prompt_length`` tokens when that is set, else its
   last ``max(max_length - L, max_length // 2)`` tokens (only as much cut as needed, but never
   below half the budget, so a long response cannot push out the whole prompt). The latest
   turns matter most for the response; the template's opening tokens are the first to go
   (TRL's ``keep_end`` mode for prompts);
2. then both responses keep their START: their first ``max_length - kept prompt`` tokens.

A pair cut in either step has ``truncated=True``; `tokenize_pairs` counts them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from mrpo.data.table import (
    ID_COLUMNS,
    Column,
    PairTable,
    column_from_lists,
    concat_tables,
    slice_rows,
)
from mrpo.data.types import Message, PreferenceExample, TokenizedPair


@dataclass(frozen=True)
class RenderedPair:
    """The text of a pair under one chat template: ``prompt + chosen`` is the full chosen
    conversation; ``chosen``/``rejected`` end with the template's end-of-turn text."""

    prompt: str
    chosen: str
    rejected: str


@dataclass
class TokenizedPairs:
    """Pairs tokenized by one tokenizer, with truncation counts.

    Attributes:
        pairs: one `TokenizedPair` per example, in input order, held as a
            :class:`~mrpo.data.table.PairTable` (token ids in int32 columns).
        num_truncated: pairs with any truncation.
        num_prompt_truncated: pairs whose prompt was cut.
        num_response_truncated: pairs whose responses were cut.
        cut_flags: (N,) bool per pair, the prompt was cut and the responses were cut (None
            when not known).
    """

    pairs: Sequence[TokenizedPair]
    num_truncated: int = 0
    num_prompt_truncated: int = 0
    num_response_truncated: int = 0
    cut_flags: tuple[np.ndarray, np.ndarray] | None = None

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"tokenized {len(self.pairs)} pairs; truncated {self.num_truncated} "
            f"(prompt cut in {self.num_prompt_truncated}, responses cut in "
            f"{self.num_response_truncated})"
        )


def with_system_prompt(prompt: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """The prompt messages with ``system_prompt`` replacing the leading system message, or
    inserted first when there is none; unchanged when ``system_prompt`` is None."""
    messages = [dict(m) for m in prompt]
    if system_prompt is None:
        return messages
    system = {"role": "system", "content": system_prompt}
    if messages and messages[0]["role"] == "system":
        return [system, *messages[1:]]
    return [system, *messages]


def _render(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[Message]],
    chat_template: str | None,
    gen: bool,
) -> list[str]:
    """Each conversation rendered by the chat template, in one batched call."""
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(
        conversations, chat_template=chat_template, add_generation_prompt=gen, tokenize=False
    )
    return [str(text) for text in texts]  # tokenize=False renders text


def _response_suffix(
    tokenizer: PreTrainedTokenizerBase, prompt_text: str, full: str, response: str
) -> str:
    """What the rendered conversation ``full`` adds after ``prompt_text`` (module doc)."""
    if not full.startswith(prompt_text):
        at = next(
            (i for i, (a, b) in enumerate(zip(full, prompt_text, strict=False)) if a != b),
            min(len(full), len(prompt_text)),
        )
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"chat template of {name} does not render the prompt (with generation prompt) as "
            f"a prefix of the full conversation; they differ at character {at}: "
            f"{prompt_text[at : at + 30]!r} vs {full[at : at + 30]!r}"
        )
    suffix = full[len(prompt_text) :]
    content = response.strip()
    end = suffix.rfind(content)
    if end != -1 and not suffix[end + len(content) :].strip() and tokenizer.eos_token:
        suffix += tokenizer.eos_token
    return suffix


def render_pairs(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> list[RenderedPair]:
    """Render the prompt and both responses of each example as text (module doc), with one
    batched template call for the prompts and one for each response."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "pass chat_template="
        )
    prompts = [with_system_prompt(ex.prompt, system_prompt) for ex in examples]
    prompt_texts = _render(tokenizer, prompts, chat_template, True)
    responses = {}
    for side in ("chosen", "rejected"):
        texts = [getattr(ex, side) for ex in examples]
        conversations = [
            [*messages, {"role": "assistant", "content": text}]
            for messages, text in zip(prompts, texts, strict=True)
        ]
        fulls = _render(tokenizer, conversations, chat_template, False)
        responses[side] = [
            _response_suffix(tokenizer, prompt, full, text)
            for prompt, full, text in zip(prompt_texts, fulls, texts, strict=True)
        ]
    return [
        RenderedPair(prompt, chosen, rejected)
        for prompt, chosen, rejected in zip(
            prompt_texts, responses["chosen"], responses["rejected"], strict=True
        )
    ]


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (the chat template carries them).

    A fast tokenizer without padding or truncation configured is called through its
    ``tokenizers`` backend directly (``encode_batch_fast``: no offsets, no attention mask):
    the same ids as ``tokenizer(texts, add_special_tokens=False)``, in about 60% of the time.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    plain = backend is not None and backend.truncation is None and backend.padding is None
    if backend is not None and plain and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
    return list(encoded["input_ids"])


def _check_lengths(max_length: int, max_prompt_length: int | None) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
    if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
        raise ValueError(
            f"max_prompt_length must be in [1, max_length={max_length}), got {max_prompt_length}"
        )


def truncate_columns(
    columns: dict[str, Column], *, max_length: int, max_prompt_length: int | None = None
) -> tuple[dict[str, Column], np.ndarray, np.ndarray]:
    """Apply the truncation rule of the module doc to every pair of the id columns at once.

    Args:
        columns: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` of N pairs.
        max_length, max_prompt_length: as in :func:`tokenize_pairs`.

    Returns:
        The cut columns, and (N,) bool arrays: the prompt was cut, the responses were cut.
    """
    _check_lengths(max_length, max_prompt_length)
    p, c, r = (np.diff(columns[name][0]) for name in ID_COLUMNS)
    longest = np.maximum(c, r)
    fits = p + longest <= max_length
    if max_prompt_length is not None:
        keep = np.minimum(p, max_prompt_length)
    else:
        keep = np.minimum(p, np.maximum(max_length - longest, max_length // 2))
    keep = np.where(fits, p, keep)
    budget = np.where(fits, longest, max_length - keep)
    rows = np.arange(len(p))
    cut = {"prompt_ids": slice_rows(columns["prompt_ids"], rows, p - keep, keep)}
    for name, n in (("chosen_ids", c), ("rejected_ids", r)):
        cut[name] = slice_rows(columns[name], rows, np.zeros_like(n), np.minimum(n, budget))
    return cut, keep < p, budget < longest


_CHUNK_PAIRS = 2048
"""Pairs tokenized per call: bounds the Python lists of ids alive at once."""


def _encoded_chunks(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None,
    chat_template: str | None,
) -> Iterator[tuple[Sequence[PreferenceExample], list[list[int]]]]:
    """Each chunk of :data:`_CHUNK_PAIRS` pairs with its token ids, untruncated: prompt, chosen
    and rejected of each pair in turn (3 lists a pair), rendered as in the module doc and
    encoded in one batch call, so that only one chunk's Python lists are alive at once. No
    pairs give one empty chunk."""
    for start in range(0, max(len(examples), 1), _CHUNK_PAIRS):
        chunk = examples[start : start + _CHUNK_PAIRS]
        rendered = render_pairs(
            chunk, tokenizer, system_prompt=system_prompt, chat_template=chat_template
        )
        texts = [text for r in rendered for text in (r.prompt, r.chosen, r.rejected)]
        yield chunk, encode_texts(tokenizer, texts)


def pair_token_lengths(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts of each pair, untruncated (for length filters).

    Rendering as in the module doc; encoded in batch calls of :data:`_CHUNK_PAIRS` pairs, so
    only the counts of the whole data set are held.
    """
    lengths: list[tuple[int, int, int]] = []
    for _, ids in _encoded_chunks(examples, tokenizer, system_prompt, chat_template):
        counts = [len(i) for i in ids]
        lengths += zip(counts[0::3], counts[1::3], counts[2::3], strict=True)
    return lengths


def tokenize_pairs(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> TokenizedPairs:
    """Tokenize many pairs (in batch calls of the tokenizer) and count truncations.

    Args:
        examples: the pairs (prompt messages ending with a user turn, two response texts).
        tokenizer: a transformers tokenizer with a chat template (or pass ``chat_template``).
        max_length: the most tokens of ``prompt + response`` (truncation rule in module doc).
        max_prompt_length: when a pair is too long, cut the prompt to this many tokens.
        system_prompt: inserted as (or replacing) the first system message.
        chat_template: a Jinja template used instead of the tokenizer's.

    Returns:
        The pairs as a :class:`~mrpo.data.table.PairTable`, in input order: prompt ids
        (rendered with the generation prompt), response ids (response text and the template's
        end-of-turn), each example's index and whether anything was cut.
    """
    _check_lengths(max_length, max_prompt_length)
    tables, prompt_cut, responses_cut = [], [], []
    for chunk, ids in _encoded_chunks(examples, tokenizer, system_prompt, chat_template):
        columns = {name: column_from_lists(ids[i::3]) for i, name in enumerate(ID_COLUMNS)}
        del ids
        cut, p_cut, r_cut = truncate_columns(
            columns, max_length=max_length, max_prompt_length=max_prompt_length
        )
        index = np.array([ex.index for ex in chunk], dtype=np.int64)
        tables.append(PairTable(index, p_cut | r_cut, cut))
        prompt_cut.append(p_cut)
        responses_cut.append(r_cut)
    table = concat_tables(tables)
    p_cut, r_cut = np.concatenate(prompt_cut), np.concatenate(responses_cut)
    return TokenizedPairs(
        pairs=table,
        num_truncated=int(table.truncated.sum()),
        num_prompt_truncated=int(p_cut.sum()),
        num_response_truncated=int(r_cut.sum()),
        cut_flags=(p_cut, r_cut),
    )
