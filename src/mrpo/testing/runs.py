"""Tiny, real training setups for tests: a random model on disk and a preference file.

Used by the test suite and by smoke checks; everything is built offline in a few seconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mrpo.testing.models import make_tiny_model, save_tiny_model
from mrpo.testing.tokenizers import make_tiny_tokenizer


def write_tiny_model(directory: Path, *, kind: str = "chatml", seed: int = 0) -> Path:
    """Save a random tiny Llama with the tiny ``kind`` tokenizer (and its chat template)."""
    tokenizer = make_tiny_tokenizer(kind)
    model = make_tiny_model(
        len(tokenizer),
        seed=seed,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return save_tiny_model(directory, model, tokenizer)


def write_hh_pairs(path: Path, num_pairs: int, *, seed: int = 0) -> Path:
    """Write ``num_pairs`` HH-RLHF-style transcripts (jsonl) with distinct texts."""
    topics: Sequence[str] = ("bread", "tea", "a bike", "a garden", "a kite", "soup", "a shelf")
    lines = []
    for i in range(num_pairs):
        topic = topics[(i + seed) % len(topics)]
        prompt = f"\n\nHuman: How do I make {topic}? Question {i}.\n\nAssistant:"
        good = f" Start simple: gather what you need for {topic}, then go step by step ({i})."
        bad = f" No idea about {topic} {i}."
        lines.append(json.dumps({"chosen": prompt + good, "rejected": prompt + bad}))
    path.write_text("\n".join(lines) + "\n")
    return path
