"""A tiny evaluation data folder in the local mirror's layout, for tests and smoke checks."""

from __future__ import annotations

import json
from pathlib import Path

GSM8K_ROWS = [
    {"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i}+2\n#### {i + 2}"}
    for i in range(6)
]
"""Six GSM8K-format rows; the train split holds all of them, the test split the first three."""

TRUTHFULQA_ROWS = [
    {
        "question": f"Is claim {i} true?",
        "mc1_targets": {"Yes.": 1, "No.": 0, "Maybe.": 0},
        "mc2_targets": {"Yes.": 1, "Indeed.": 1, "No.": 0},
    }
    for i in range(3)
]
"""Three TruthfulQA questions in the original release's ``{answer: label}`` format."""


def write_eval_data(root: Path) -> Path:
    """Write ``gsm8k/{train,test}.jsonl`` and ``truthfulqa/mc_task.json`` under ``root``."""
    (root / "gsm8k").mkdir(parents=True)
    (root / "truthfulqa").mkdir()
    for split, rows in (("train", GSM8K_ROWS), ("test", GSM8K_ROWS[:3])):
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        (root / "gsm8k" / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    (root / "truthfulqa" / "mc_task.json").write_text(json.dumps(TRUTHFULQA_ROWS), encoding="utf-8")
    return root
