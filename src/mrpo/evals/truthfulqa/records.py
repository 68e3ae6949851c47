"""One TruthfulQA multiple-choice item, as :mod:`mrpo.evals.truthfulqa.loader` reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TruthfulQARecord:
    """One TruthfulQA multiple-choice question, choices in the release order.

    Attributes:
        question: the question text.
        mc1_choices: answer options of the single-true task; exactly one label is 1.
        mc1_labels: 0/1 per ``mc1_choices`` entry.
        mc2_choices: answer options of the multi-true task.
        mc2_labels: 0/1 per ``mc2_choices`` entry (at least one 1 and one 0).
        index: row number in the data set.
    """

    question: str
    mc1_choices: tuple[str, ...]
    mc1_labels: tuple[int, ...]
    mc2_choices: tuple[str, ...]
    mc2_labels: tuple[int, ...]
    index: int

    @property
    def mc1_gold(self) -> int:
        """Index of the one true MC1 choice."""
        return self.mc1_labels.index(1)
