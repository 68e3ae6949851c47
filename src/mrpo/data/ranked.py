"""The ``ranked_answers`` preference format: one prompt and several ranked answers per row.

Rows hold ``prompt`` (an HH-RLHF style transcript ending in ``"\\n\\nAssistant:"``, a plain
string, or a chat message list) and ``answers``, a list of ``{"answer": text, "rank": number}``
with rank 1 the best (``berkeley-nest/Nectar``). A row gives one pair: the best-ranked answer
is chosen, the worst-ranked one rejected (the widest preference gap the row offers); equal
ranks keep the earlier answer. Rows with fewer than two answers cannot make a pair.
"""

from __future__ import annotations

from typing import Any

from mrpo.data.messages import Pair, as_prompt, parse_hh_transcript, require_fields
from mrpo.data.validation import RowError


def _prompt(value: Any) -> tuple[dict[str, str], ...]:
    """The prompt messages; a transcript's trailing empty ``Assistant:`` turn is dropped."""
    if isinstance(value, str) and "Human:" in value:
        turns = list(parse_hh_transcript(value, "prompt"))
        if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
            turns.pop()
        return tuple(turns)
    return as_prompt(value)


def _rank(answer: Any, position: int) -> float:
    ok = isinstance(answer, dict) and isinstance(answer.get("answer"), str)
    rank = answer.get("rank") if ok else None
    if not ok or isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise RowError(
            "not_text", f"answer {position} is not an {{'answer': text, 'rank': number}} object"
        )
    return float(rank)


def split_ranked_answers(row: dict[str, Any]) -> Pair:
    """(prompt, best-ranked answer, worst-ranked answer) of one row (module doc)."""
    prompt, answers = require_fields(row, ("prompt", "answers"))
    if not isinstance(answers, (list, tuple)) or len(answers) < 2:
        raise RowError("missing_field", "'answers' must list at least two ranked answers")
    ranks = [_rank(a, i) for i, a in enumerate(answers, start=1)]
    best = min(range(len(ranks)), key=ranks.__getitem__)
    worst = max(range(len(ranks)), key=lambda i: (ranks[i], -i))
    if ranks[best] == ranks[worst]:
        raise RowError("identical_responses", "every answer has the same rank")
    return _prompt(prompt), answers[best]["answer"], answers[worst]["answer"]


def detect_ranked_answers(keys: frozenset[str]) -> bool:
    """Rows with a ``prompt`` and a list of ranked ``answers``."""
    return {"prompt", "answers"} <= keys
