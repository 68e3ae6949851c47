"""Tiny, real training setups for tests: a random model on disk and a preference file.

Used by the test suite and by smoke checks; everything is built offline in a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mrpo.testing.models import make_tiny_model, save_tiny_model
from mrpo.testing.tokenizers import make_tiny_tokenizer


def write_tiny_model(
    directory: Path, *, kind: str = "chatml", seed: int = 0, hidden_size: int = 32
) -> Path:
    """Save a random tiny Llama with the tiny ``kind`` tokenizer (and its chat template).

    ``hidden_size``: :data:`~mrpo.testing.models.QUANTIZABLE_HIDDEN_SIZE` for a model that is
    loaded in 4 bits (every CPU kernel of bitsandbytes accepts its layers)."""
    tokenizer = make_tiny_tokenizer(kind)
    model = make_tiny_model(
        len(tokenizer),
        seed=seed,
        hidden_size=hidden_size,
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


def tiny_run_args(model: str | Path, data: str | Path, cache: str | Path) -> list[str]:
    """``mrpo-train`` overrides of a tiny run of ``model`` on the preference file ``data``, the
    reference cache in ``cache``, no logger: callers add what their test is about."""
    return [
        "debug=tiny",
        f"model.source={model}",
        "data=local_file",
        f"data.source={data}",
        "logger=none",
        f"paths.cache_dir={cache}",
    ]


def run_train_cli(
    args: Sequence[str],
    run_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mrpo.cli.train *args`` in ``run_dir`` as a real process; capture its output.

    One torch thread and W&B offline unless ``env`` says otherwise; an empty value in ``env``
    removes that variable.
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    full_env["WANDB_SILENT"] = "true"
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v != ""}
    cmd = [sys.executable, "-m", "mrpo.cli.train", *args, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
