"""Run a named set of evaluation tasks on a model and tokenizer; write their results.

Tasks come from the registry (:mod:`mrpo.evals.tasks`; the built-in ones and their metrics are
listed in :mod:`mrpo.evals.registry`). Each task reports ``eval/<name>/<metric>`` scores plus
``eval/<name>/num_samples`` and ``eval/<name>/seconds`` (and ``generated_tokens`` or
``num_requests``). ``limit=n`` evaluates the first n questions of each set, in data set order,
so that limited runs are comparable with each other and with the harness's ``--limit n``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mrpo.atomic import write_json
from mrpo.evals.gsm8k import MAX_NEW_TOKENS
from mrpo.evals.registry import EVAL_NAMES
from mrpo.evals.tasks import COUNT_NAMES, EvalSettings, TaskData, get_task

__all__ = [
    "EVAL_NAMES",
    "EvalData",
    "EvalOutput",
    "append_samples",
    "check_eval_names",
    "load_eval_data",
    "run_eval_suite",
    "run_evals",
    "split_scores",
    "write_eval_results",
]

EvalData = dict[str, TaskData]
"""Each task's loaded data, by task name (:func:`load_eval_data`), reused by every evaluation."""


@dataclass
class EvalOutput:
    """Flat metrics (``eval/...`` -> number) and per-task sample lists."""

    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def split_scores(metrics: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Split flat ``eval/...`` metrics into (scores, counts and timings)."""
    scores: dict[str, float] = {}
    counts: dict[str, float] = {}
    for key, value in metrics.items():
        (counts if key.rsplit("/", 1)[-1] in COUNT_NAMES else scores)[key] = value
    return scores, counts


def check_eval_names(evals: Sequence[str]) -> list[str]:
    """Return ``evals`` without duplicates, or raise ValueError naming an unknown one."""
    unknown = [name for name in evals if name not in EVAL_NAMES]
    if unknown:
        raise ValueError(f"unknown evaluation(s) {unknown}; known: {', '.join(EVAL_NAMES)}")
    return list(dict.fromkeys(evals))


def load_eval_data(
    evals: Sequence[str], *, data_dir: str | os.PathLike[str] | None = None
) -> EvalData:
    """Load the data each task of ``evals`` needs (local files or the hub; see the tasks)."""
    return {name: get_task(name).load_data(data_dir) for name in check_eval_names(evals)}


def run_eval_suite(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    evals: Sequence[str],
    *,
    limit: int | None = None,
    data: EvalData | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS,
    max_length: int | None = None,
    progress: bool = False,
) -> EvalOutput:
    """Run the tasks ``evals`` and return their metrics and samples.

    The model is put in eval mode for the run and its previous mode restored afterwards.
    ``data`` skips loading (pass the result of :func:`load_eval_data`); otherwise the sets are
    loaded from ``data_dir``, ``MRPO_DATA_DIR`` or the hub. ``progress`` shows a progress bar
    per task (stderr).
    """
    evals = check_eval_names(evals)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions or None, got {limit}")
    data = data if data is not None else load_eval_data(evals, data_dir=data_dir)
    output = EvalOutput()
    was_training = model.training
    model.eval()
    try:
        for name in evals:
            if name not in data:
                raise ValueError(f"no data loaded for evaluation {name!r}; use load_eval_data")
            settings = EvalSettings(
                limit=limit,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                max_length=max_length,
                progress=name if progress else None,
            )
            start = time.perf_counter()
            result = get_task(name).evaluate(model, tokenizer, data[name], settings)
            counts = {**result.counts, "seconds": time.perf_counter() - start}
            for key, value in {**result.metrics, **counts}.items():
                output.metrics[f"eval/{name}/{key}"] = float(value)
            output.samples[name] = result.samples
    finally:
        model.train(was_training)
    return output


def run_evals(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    evals: Sequence[str],
    *,
    limit: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS,
    max_length: int | None = None,
) -> dict[str, float]:
    """Run ``evals`` and return the flat metrics dict (see the module doc for the names)."""
    return run_eval_suite(
        model,
        tokenizer,
        evals,
        limit=limit,
        data_dir=data_dir,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_length=max_length,
    ).metrics


def write_eval_results(path: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """Write ``results`` as indented JSON, atomically; return the path."""
    return write_json(path, results)


def append_samples(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Append ``rows`` to a JSON-lines file (one object per line); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
    return path
