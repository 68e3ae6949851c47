"""The registry of preference data formats: normalize one row of a known format to a
`PreferenceExample`.

A format (:class:`PreferenceFormat`) says from a source's fields whether it is that format and
turns one row into ``(prompt messages, chosen text, rejected text)``; the checks every pair must
pass are applied after it. :data:`FORMATS` lists them in detection order: the first whose
``detect`` accepts a source's fields reads it, unless ``data.format`` names one. Adding a
format: its ``detect`` and ``split`` functions (in their own module), a
:class:`PreferenceFormat` entry in :data:`FORMATS`, and a ``conf/data/<set>.yaml`` that reads a
source of it (``format: <name>`` where detection cannot tell).

The built-in formats:

``transcripts`` -- fields ``chosen`` and ``rejected`` only, each either a full HH-RLHF transcript
(``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) or a chat message list. The prompt is the turns the two
conversations share before their final assistant turn; the responses are those final turns.
HH-RLHF transcripts are parsed with these rules (each case seen in the released data):

- the turn markers are ``"\\n\\nHuman:"`` and ``"\\n\\nAssistant:"``; a transcript may also begin
  with ``"Human:"`` without the blank line. Text before the first marker is malformed.
- turn texts are stripped of surrounding whitespace (the format puts a space, sometimes two,
  after the colon). ``Human:`` inside a turn without the preceding blank line is turn text.
- consecutive turns of the same speaker are merged into one message joined by a blank line, so
  the prompt alternates user/assistant as strict chat templates require. This also normalizes
  pairs where one transcript has two Assistant turns in a row at its end: its response is both
  turns, and the prompt is what the transcripts share before them.
- a transcript must start with a Human turn and end with an Assistant turn; the two transcripts
  must agree on every turn before the final one (else ``diverging_transcripts``).

``prompt_chosen_rejected`` -- field ``prompt`` (a string, read as one user turn, or a message
list) and ``chosen``/``rejected`` (strings or message lists). A response message list may include
the prompt turns, as in ``HuggingFaceH4/ultrafeedback_binarized``; the response is its final
message, which must be an assistant message. Texts of this format are kept verbatim.

``ranked_answers`` -- field ``prompt`` and a list ``answers`` of ``{answer, rank}`` (rank 1 best),
as in ``berkeley-nest/Nectar``: the best-ranked answer is chosen, the worst-ranked one rejected
(:mod:`mrpo.data.ranked`).

Sets whose rows are one of these formats under other field names are read with a column
mapping (``data.columns``, applied before detection).

For every format: the prompt ends with a non-empty user turn, both responses are non-empty, and
chosen differs from rejected (ignoring surrounding whitespace).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from mrpo.data.messages import (
    Pair,
    as_messages,
    as_prompt,
    as_response,
    parse_hh_transcript,
    require_fields,
)
from mrpo.data.ranked import detect_ranked_answers, split_ranked_answers
from mrpo.data.types import Message, PreferenceExample
from mrpo.data.validation import DataValidationError, RowError

__all__ = ["FORMATS", "PreferenceFormat", "detect_format", "normalize_row", "parse_hh_transcript"]


@dataclass(frozen=True)
class PreferenceFormat:
    """One source format of preference rows.

    Attributes:
        name: the value of ``data.format`` that selects it.
        description: one line for messages and docs.
        detect: ``fields -> bool``, whether a source with these row fields is in this format.
        split: ``row -> (prompt, chosen, rejected)`` for one JSON object; raises
            :class:`~mrpo.data.validation.RowError` for a row it cannot read.
    """

    name: str
    description: str
    detect: Callable[[frozenset[str]], bool]
    split: Callable[[dict[str, Any]], Pair]


def detect_format(fields: Iterable[str], source: str) -> str:
    """The format of a source from the union of its row fields (see module doc).

    Raises:
        DataValidationError: no format's fields are present.
    """
    keys = frozenset(fields)
    for fmt in FORMATS.values():
        if fmt.detect(keys):
            return fmt.name
    raise DataValidationError(
        f"{source}: cannot tell the preference format from the fields {sorted(keys)}; expected "
        "'chosen' and 'rejected' (HH-RLHF transcripts or message lists), or 'prompt', 'chosen' "
        "and 'rejected'",
        source=source,
    )


def normalize_row(value: Any, fmt: str, index: int) -> PreferenceExample:
    """Normalize one raw row of format ``fmt``; ``index`` becomes `PreferenceExample.index`.

    Raises:
        RowError: the row cannot be normalized; its reason code says why.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {list(FORMATS)}")
    if isinstance(value, RowError):
        raise value
    if not isinstance(value, dict):
        raise RowError("not_object", f"expected a JSON object, got {type(value).__name__}")
    prompt, chosen, rejected = FORMATS[fmt].split(value)
    return _checked_example(prompt, chosen, rejected, index)


def _split_transcripts(chosen: Any, rejected: Any) -> tuple[tuple[Message, ...], str, str]:
    """(prompt, chosen response, rejected response) from two whole conversations."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        conversations = (
            parse_hh_transcript(chosen, "chosen"),
            parse_hh_transcript(rejected, "rejected"),
        )
    elif not isinstance(chosen, str) and not isinstance(rejected, str):
        conversations = as_messages(chosen, "chosen"), as_messages(rejected, "rejected")
    else:
        raise RowError("not_text", "'chosen' and 'rejected' mix a transcript and a message list")
    for name, turns in zip(("chosen", "rejected"), conversations, strict=True):
        if not turns or turns[-1]["role"] != "assistant":
            raise RowError("response_not_assistant", f"{name} does not end with an assistant turn")
    chosen_prompt, rejected_prompt = conversations[0][:-1], conversations[1][:-1]
    if chosen_prompt != rejected_prompt:
        turn = next(
            (
                i
                for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt, strict=False), 1)
                if a != b
            ),
            min(len(chosen_prompt), len(rejected_prompt)) + 1,
        )
        raise RowError(
            "diverging_transcripts",
            f"chosen and rejected differ at turn {turn}, before their final assistant turns",
        )
    return chosen_prompt, conversations[0][-1]["content"], conversations[1][-1]["content"]


def _checked_example(
    prompt: tuple[Message, ...], chosen: str, rejected: str, index: int
) -> PreferenceExample:
    if not prompt:
        raise RowError("prompt_not_user", "the prompt has no messages")
    if prompt[-1]["role"] != "user":
        raise RowError("prompt_not_user", f"the prompt ends with a {prompt[-1]['role']} turn")
    if not prompt[-1]["content"].strip():
        raise RowError("empty_prompt", "the prompt's last user turn is empty")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise RowError("empty_response", f"the {name} response is empty")
    if chosen.strip() == rejected.strip():
        raise RowError("identical_responses", "chosen and rejected responses are identical")
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, index=index)


def _split_prompt_chosen_rejected(row: dict[str, Any]) -> Pair:
    prompt, chosen, rejected = require_fields(row, ("prompt", "chosen", "rejected"))
    return as_prompt(prompt), as_response(chosen, "chosen"), as_response(rejected, "rejected")


def _has_response(keys: frozenset[str]) -> bool:
    return bool(keys & {"chosen", "rejected"})


FORMATS: Mapping[str, PreferenceFormat] = MappingProxyType(
    {
        fmt.name: fmt
        for fmt in (
            PreferenceFormat(
                name="prompt_chosen_rejected",
                description="'prompt', 'chosen', 'rejected' (strings or chat message lists)",
                detect=lambda keys: "prompt" in keys and _has_response(keys),
                split=_split_prompt_chosen_rejected,
            ),
            PreferenceFormat(
                name="transcripts",
                description="'chosen' and 'rejected' whole conversations (HH-RLHF transcripts)",
                detect=_has_response,
                split=lambda row: _split_transcripts(*require_fields(row, ("chosen", "rejected"))),
            ),
            PreferenceFormat(
                name="ranked_answers",
                description="'prompt' and a list of ranked 'answers' (best vs worst rank)",
                detect=detect_ranked_answers,
                split=split_ranked_answers,
            ),
        )
    }
)
"""Format name -> format, in detection order (the first that accepts a source's fields)."""
