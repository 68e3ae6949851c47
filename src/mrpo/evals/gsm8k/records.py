"""One GSM8K item, as :mod:`mrpo.evals.gsm8k.loader` reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GSM8KRecord:
    """One GSM8K problem.

    Attributes:
        question: the problem text.
        answer: the full reference solution, ending in ``"#### <number>"``.
        gold: the text after the last ``"#### "`` (e.g. ``"1,000"``), checked to parse as a number.
        index: row number in its split.
    """

    question: str
    answer: str
    gold: str
    index: int
