"""Reading chat messages out of raw preference rows: the helpers every format shares.

HH-RLHF transcripts (rules in :mod:`mrpo.data.formats`), chat message lists, prompts given as
one string, and the fields a row must have. Each raises :class:`~mrpo.data.validation.RowError`
with a reason code for a row it cannot read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mrpo.data.types import Message
from mrpo.data.validation import RowError

ROLES = ("system", "user", "assistant")

_MARKER = re.compile(r"\n\n(Human|Assistant):")
_SPEAKER_ROLE = {"Human": "user", "Assistant": "assistant"}

Pair = tuple[tuple[Message, ...], str, str]
"""(prompt messages, chosen response text, rejected response text) of one row."""


def parse_hh_transcript(text: str, name: str = "transcript") -> tuple[Message, ...]:
    """Parse an HH-RLHF transcript into alternating user/assistant messages (module doc rules).

    Raises:
        RowError: ``malformed_transcript`` (text before the first turn, no turns, or a first
            turn by the Assistant).
    """
    body = text.lstrip()
    if body.startswith(("Human:", "Assistant:")):
        body = "\n\n" + body
    parts = _MARKER.split(body)
    if parts[0].strip():
        raise RowError(
            "malformed_transcript",
            f"{name} transcript has text before its first Human turn: {parts[0][:40]!r}",
        )
    if len(parts) == 1:
        raise RowError("malformed_transcript", f"{name} transcript has no Human/Assistant turns")
    turns: list[Message] = []
    for speaker, raw in zip(parts[1::2], parts[2::2], strict=True):
        role, content = _SPEAKER_ROLE[speaker], raw.strip()
        if turns and turns[-1]["role"] == role:
            merged = "\n\n".join(t for t in (turns[-1]["content"], content) if t)
            turns[-1] = {"role": role, "content": merged}
        else:
            turns.append({"role": role, "content": content})
    if turns[0]["role"] != "user":
        raise RowError(
            "malformed_transcript", f"{name} transcript starts with an Assistant turn, not Human"
        )
    return tuple(turns)


def require_fields(row: dict[str, Any], names: Sequence[str]) -> list[Any]:
    """The values of ``names`` in ``row``; raises ``missing_field`` naming the absent ones."""
    missing = [n for n in names if row.get(n) is None]
    if missing:
        raise RowError("missing_field", "missing field(s) " + ", ".join(map(repr, missing)))
    return [row[n] for n in names]


def as_messages(value: Any, name: str) -> tuple[Message, ...]:
    """A chat message list checked and copied; raises ``not_text`` naming ``name``."""
    if not isinstance(value, (list, tuple)):
        raise RowError("not_text", f"{name!r} is a {type(value).__name__}, not text or messages")
    messages = []
    for i, message in enumerate(value, start=1):
        ok = (
            isinstance(message, dict)
            and message.get("role") in ROLES
            and isinstance(message.get("content"), str)
        )
        if not ok:
            raise RowError(
                "not_text",
                f"{name!r} message {i} is not a {{'role': {'|'.join(ROLES)}, 'content': text}} "
                f"message: {str(message)[:60]}",
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return tuple(messages)


def as_prompt(value: Any) -> tuple[Message, ...]:
    """Prompt messages from a string (one user turn) or a message list."""
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    return as_messages(value, "prompt")


def as_response(value: Any, name: str) -> str:
    """A response text from a string or a message list ending with an assistant message."""
    if isinstance(value, str):
        return value
    messages = as_messages(value, name)
    if not messages or messages[-1]["role"] != "assistant":
        last = messages[-1]["role"] if messages else "nothing"
        raise RowError(
            "response_not_assistant", f"{name!r} message list ends with {last}, not assistant"
        )
    return messages[-1]["content"]
