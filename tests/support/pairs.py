"""One-pair forms of :mod:`mrpo.data.tokenize`'s batched rendering, truncation and
tokenization, for tests."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from mrpo.data.table import ID_COLUMNS, column_from_lists
from mrpo.data.tokenize import RenderedPair, render_pairs, tokenize_pairs, truncate_columns
from mrpo.data.types import PreferenceExample, TokenizedPair


def render_pair(
    example: PreferenceExample,
    tokenizer: PreTrainedTokenizerBase,
    *,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> RenderedPair:
    """Render the prompt and both responses of ``example`` as text (:mod:`mrpo.data.tokenize`)."""
    return render_pairs(
        [example], tokenizer, system_prompt=system_prompt, chat_template=chat_template
    )[0]


def truncate_pair(
    prompt: Sequence[int],
    chosen: Sequence[int],
    rejected: Sequence[int],
    *,
    max_length: int,
    max_prompt_length: int | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], bool, bool]:
    """Apply the truncation rule of :mod:`mrpo.data.tokenize` to one pair.

    Returns:
        (prompt, chosen, rejected, prompt_cut, responses_cut).
    """
    columns = {
        name: column_from_lists([ids])
        for name, ids in zip(ID_COLUMNS, (prompt, chosen, rejected), strict=True)
    }
    cut, prompt_cut, responses_cut = truncate_columns(
        columns, max_length=max_length, max_prompt_length=max_prompt_length
    )
    kept = (tuple(cut[name][1].tolist()) for name in ID_COLUMNS)
    return (*kept, bool(prompt_cut[0]), bool(responses_cut[0]))  # type: ignore[return-value]


def tokenize_pair(
    example: PreferenceExample,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> TokenizedPair:
    """One pair tokenized as :func:`~mrpo.data.tokenize.tokenize_pairs` tokenizes many."""
    return tokenize_pairs(
        [example],
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        system_prompt=system_prompt,
        chat_template=chat_template,
    ).pairs[0]
