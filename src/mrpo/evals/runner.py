"""Run a named set of evaluations on a model and tokenizer; write their results.

Evaluations (``EVAL_NAMES``) and the metrics they log:

- ``gsm8k``: harness ``gsm8k``, 5-shot -> ``eval/gsm8k/{strict_match,flexible_extract}``
- ``gsm8k_chat``: 0-shot, chat template -> ``eval/gsm8k_chat/{strict_match,flexible_extract}``
- ``truthfulqa``: harness ``truthfulqa_mc1`` and ``truthfulqa_mc2`` -> ``eval/truthfulqa/{mc1,mc2}``

Each also reports ``eval/<name>/num_samples`` and ``eval/<name>/seconds`` (and
``generated_tokens`` or ``num_requests``). ``limit=n`` evaluates the first n questions of each
set, in data set order, so that limited runs are comparable with each other and with the
harness's ``--limit n``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mrpo.data.evalsets import GSM8KRecord, TruthfulQARecord, load_gsm8k, load_truthfulqa_mc
from mrpo.evals.gsm8k import MAX_NEW_TOKENS, evaluate_gsm8k
from mrpo.evals.truthfulqa import evaluate_truthfulqa

EVAL_NAMES = ("gsm8k", "gsm8k_chat", "truthfulqa")
COUNT_NAMES = ("num_samples", "num_requests", "generated_tokens", "seconds")
"""Last parts of the ``eval/<name>/...`` keys that are counts or timings, not scores."""


@dataclass
class EvalData:
    """Evaluation records, loaded once and reused by every evaluation of a run."""

    gsm8k_test: list[GSM8KRecord] | None = None
    gsm8k_train: list[GSM8KRecord] | None = None
    truthfulqa: list[TruthfulQARecord] | None = None


@dataclass
class EvalOutput:
    """Flat metrics (``eval/...`` -> number) and per-evaluation sample lists."""

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
    """Load the records the evaluations ``evals`` need (hub or local; see mrpo.data.evalsets)."""
    evals = check_eval_names(evals)
    data = EvalData()
    if "gsm8k" in evals or "gsm8k_chat" in evals:
        data.gsm8k_test = load_gsm8k("test", data_dir=data_dir)
    if "gsm8k" in evals:
        data.gsm8k_train = load_gsm8k("train", data_dir=data_dir)
    if "truthfulqa" in evals:
        data.truthfulqa = load_truthfulqa_mc(data_dir=data_dir)
    return data


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
    """Run ``evals`` and return their metrics and samples.

    The model is put in eval mode for the run and its previous mode restored afterwards.
    ``data`` skips loading (pass the result of :func:`load_eval_data`); otherwise the sets are
    loaded from ``data_dir``, ``MRPO_DATA_DIR`` or the hub. ``progress`` shows a progress bar
    per evaluation (stderr).
    """
    evals = check_eval_names(evals)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions or None, got {limit}")
    data = data or load_eval_data(evals, data_dir=data_dir)
    output = EvalOutput()
    was_training = model.training
    model.eval()
    try:
        for name in evals:
            start = time.perf_counter()
            metrics, samples, counts = _run_one(
                name,
                model,
                tokenizer,
                data,
                limit,
                batch_size,
                max_new_tokens,
                max_length,
                name if progress else None,
            )
            counts["seconds"] = time.perf_counter() - start
            for key, value in {**metrics, **counts}.items():
                output.metrics[f"eval/{name}/{key}"] = float(value)
            output.samples[name] = samples
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


def _run_one(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: EvalData,
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    max_length: int | None,
    progress: str | None,
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, float]]:
    if name in ("gsm8k", "gsm8k_chat"):
        records = _required(data.gsm8k_test, "gsm8k test")[:limit]
        train = _required(data.gsm8k_train, "gsm8k train") if name == "gsm8k" else None
        result = evaluate_gsm8k(
            model,
            tokenizer,
            records,
            train,
            chat=name == "gsm8k_chat",
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            max_length=max_length,
            progress=progress,
        )
        counts = {"num_samples": len(records), "generated_tokens": result.num_generated_tokens}
        return result.metrics, result.samples, counts
    records_tqa = _required(data.truthfulqa, "truthfulqa")[:limit]
    result_tqa = evaluate_truthfulqa(
        model,
        tokenizer,
        records_tqa,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )
    counts = {"num_samples": len(records_tqa), "num_requests": result_tqa.num_requests}
    return result_tqa.metrics, result_tqa.samples, counts


def _required(records: list[Any] | None, what: str) -> list[Any]:
    if records is None:
        raise ValueError(f"EvalData has no {what} records; load them with load_eval_data")
    return records


def write_eval_results(path: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """Write ``results`` as indented JSON, atomically (temporary file + rename); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(results), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def append_samples(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Append ``rows`` to a JSON-lines file (one object per line); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
    return path
