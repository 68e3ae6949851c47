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

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

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
        pairs: one `TokenizedPair` per example, in input order.
        num_truncated: pairs with any truncation.
        num_prompt_truncated: pairs whose prompt was cut.
        num_response_truncated: pairs whose responses were cut.
    """

    pairs: list[TokenizedPair]
    num_truncated: int = 0
    num_prompt_truncated: int = 0
    num_response_truncated: int = 0

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
    messages: list[Message],
    chat_template: str | None,
    gen: bool,
) -> str:
    text = tokenizer.apply_chat_template(
        messages, chat_template=chat_template, add_generation_prompt=gen, tokenize=False
    )
    return str(text)  # tokenize=False renders text


def render_response(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    prompt_text: str,
    response: str,
    chat_template: str | None = None,
) -> str:
    """The text a response adds after ``prompt_text`` (response + end-of-turn; module doc).

    Raises:
        ValueError: the template does not render the prompt as a prefix of the conversation.
    """
    full = _render(
        tokenizer, [*messages, {"role": "assistant", "content": response}], chat_template, False
    )
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


def render_pair(
    example: PreferenceExample,
    tokenizer: PreTrainedTokenizerBase,
    *,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> RenderedPair:
    """Render the prompt and both responses of ``example`` as text (module doc)."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "pass chat_template="
        )
    messages = with_system_prompt(example.prompt, system_prompt)
    prompt_text = _render(tokenizer, messages, chat_template, True)
    return RenderedPair(
        prompt=prompt_text,
        chosen=render_response(tokenizer, messages, prompt_text, example.chosen, chat_template),
        rejected=render_response(tokenizer, messages, prompt_text, example.rejected, chat_template),
    )


def _check_lengths(max_length: int, max_prompt_length: int | None) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
    if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
        raise ValueError(
            f"max_prompt_length must be in [1, max_length={max_length}), got {max_prompt_length}"
        )


def truncate_pair(
    prompt: Sequence[int],
    chosen: Sequence[int],
    rejected: Sequence[int],
    *,
    max_length: int,
    max_prompt_length: int | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], bool, bool]:
    """Apply the truncation rule of the module doc.

    Returns:
        (prompt, chosen, rejected, prompt_cut, responses_cut).
    """
    _check_lengths(max_length, max_prompt_length)
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return tuple(prompt), tuple(chosen), tuple(rejected), False, False
    if max_prompt_length is not None:
        keep = min(len(prompt), max_prompt_length)
    else:
        keep = min(len(prompt), max(max_length - longest, max_length // 2))
    budget = max_length - keep
    kept_prompt = tuple(prompt[len(prompt) - keep :])
    return (
        kept_prompt,
        tuple(chosen[:budget]),
        tuple(rejected[:budget]),
        keep < len(prompt),
        budget < longest,
    )


def encode_pairs(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> list[tuple[list[int], list[int], list[int]]]:
    """The (prompt, chosen, rejected) token ids of each pair, before any truncation.

    Rendering as in the module doc; all texts are encoded in one batch call.
    """
    rendered = [
        render_pair(ex, tokenizer, system_prompt=system_prompt, chat_template=chat_template)
        for ex in examples
    ]
    texts = [text for r in rendered for text in (r.prompt, r.chosen, r.rejected)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [(ids[3 * i], ids[3 * i + 1], ids[3 * i + 2]) for i in range(len(examples))]


def pair_token_lengths(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts of each pair, untruncated (for length filters)."""
    encoded = encode_pairs(
        examples, tokenizer, system_prompt=system_prompt, chat_template=chat_template
    )
    return [(len(p), len(c), len(r)) for p, c, r in encoded]


def tokenize_pairs(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> TokenizedPairs:
    """Tokenize many pairs (texts are encoded in one batch call) and count truncations.

    Args and rules as in `tokenize_pair`.
    """
    _check_lengths(max_length, max_prompt_length)
    encoded = encode_pairs(
        examples, tokenizer, system_prompt=system_prompt, chat_template=chat_template
    )
    result = TokenizedPairs(pairs=[])
    for ex, ids in zip(examples, encoded, strict=True):
        prompt, chosen, rejected, prompt_cut, responses_cut = truncate_pair(
            *ids, max_length=max_length, max_prompt_length=max_prompt_length
        )
        truncated = prompt_cut or responses_cut
        result.pairs.append(TokenizedPair(prompt, chosen, rejected, ex.index, truncated))
        result.num_truncated += truncated
        result.num_prompt_truncated += prompt_cut
        result.num_response_truncated += responses_cut
    return result


def tokenize_pair(
    example: PreferenceExample,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> TokenizedPair:
    """Tokenize one pair for one model.

    Args:
        example: the pair (prompt messages ending with a user turn, two response texts).
        tokenizer: a transformers tokenizer with a chat template (or pass ``chat_template``).
        max_length: the most tokens of ``prompt + response`` (truncation rule in module doc).
        max_prompt_length: when the pair is too long, cut the prompt to this many tokens.
        system_prompt: inserted as (or replacing) the first system message.
        chat_template: a Jinja template used instead of the tokenizer's.

    Returns:
        prompt ids (rendered with the generation prompt), response ids (response text and the
        template's end-of-turn), the example's index and whether anything was cut.
    """
    return tokenize_pairs(
        [example],
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        system_prompt=system_prompt,
        chat_template=chat_template,
    ).pairs[0]
