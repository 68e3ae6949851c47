"""Run a named set of evaluation tasks on a model and tokenizer; write their results.

Tasks come from the registry (:mod:`mrpo.evals.tasks`; the built-in ones and their metrics are
listed in :mod:`mrpo.evals.registry`); any other name is an lm-evaluation-harness task, run by
lm-eval with ``harness``'s settings (:mod:`mrpo.evals.harness`). Each task reports
``eval/<name>/<metric>`` scores plus ``eval/<name>/num_samples`` and ``eval/<name>/seconds``
(and ``generated_tokens`` or ``num_requests``). ``limit=n`` evaluates the first n questions of
each set, in data set order, so that limited runs are comparable with each other and with the
harness's ``--limit n``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mrpo.atomic import write_json
from mrpo.domains import Flag, Items, Number, Text, setting
from mrpo.errors import InputError, OptionError
from mrpo.evals.generate import DRAFT_TOKENS
from mrpo.evals.gsm8k import MAX_NEW_TOKENS
from mrpo.evals.harness.options import HarnessOptions
from mrpo.evals.harness.preflight import check_harness_tasks
from mrpo.evals.registry import EVAL_NAMES, resolve_task
from mrpo.evals.tasks import COUNT_NAMES, EvalSettings, TaskData

RESULTS_FILE = "eval_results.json"
SAMPLES_FILE = "samples.jsonl"

__all__ = [
    "EVAL_NAMES",
    "EvalConfig",
    "EvalData",
    "EvalOutput",
    "append_samples",
    "check_eval_names",
    "format_scores",
    "load_eval_data",
    "run_eval_suite",
    "run_evals",
    "split_scores",
    "write_eval_results",
]

EvalData = dict[str, TaskData]
"""Each task's loaded data, by task name (:func:`load_eval_data`), reused by every evaluation."""


@dataclass
class EvalConfig:
    """The ``eval`` config group: benchmarks run by the evaluation callback during training, and
    by ``mrpo-eval`` (which uses ``tasks``, ``limit``, ``batch_size``, ``max_new_tokens``,
    ``draft_tokens``, ``log_samples`` and ``harness``; ``every_n_steps`` and ``final_limit``
    concern training only). A task name that is not built in is an lm-evaluation-harness task,
    run with ``harness``'s settings."""

    tasks: list[str] = setting([], Items(Text()))
    every_n_steps: int = setting(0, Number(int, ge=0))
    limit: int | None = setting(50, Number(int, ge=1, nullable=True))
    final_limit: int | None = setting(None, Number(int, ge=0, nullable=True))
    batch_size: int = setting(16, Number(int, ge=1))
    max_new_tokens: int = setting(MAX_NEW_TOKENS, Number(int, ge=1))
    draft_tokens: int = setting(DRAFT_TOKENS, Number(int, ge=0))
    log_samples: bool = setting(True, Flag())
    harness: HarnessOptions = field(default_factory=HarnessOptions)

    def check(self, data_dir: str | None) -> None:
        """Every task built in or an lm-eval task whose data is at hand, few-shot counts given
        for those only (an :class:`OptionError` naming the option)."""
        # Names the registry does not know are lm-eval's: checked against its index and data.
        harness_tasks = [t for t in self.tasks if t not in EVAL_NAMES]
        for name, shots in self.harness.num_fewshot.items():
            option = f"harness.num_fewshot.{name}"
            if name not in harness_tasks:
                raise OptionError(option, "names no lm-eval task of eval.tasks")
            if shots < 0:
                raise OptionError(option, f"must be >= 0, got {shots}")
        check_harness_tasks(harness_tasks, self.harness, data_dir=data_dir)

    def load_data(self, data_dir: str | os.PathLike[str] | None) -> EvalData:
        """Each task's data, loaded once (:func:`load_eval_data`); data that cannot be loaded
        is an :class:`OptionError` naming ``tasks``."""
        try:
            return load_eval_data(self.tasks, data_dir=data_dir, harness=self.harness)
        except (InputError, OptionError):  # a bad file, or an lm-eval task named in its message
            raise
        except Exception as err:  # a missing or malformed file, or the hub out of reach
            raise OptionError(
                "tasks",
                f"the evaluation data of {list(self.tasks)} cannot be loaded: {err} "
                "(set paths.data_dir or MRPO_DATA_DIR to a mirror holding it, or drop the task)",
            ) from None


@dataclass
class EvalOutput:
    """Flat metrics (``eval/...`` -> number), and by task: samples, the sample fields of its
    W&B table (:attr:`EvalTask.sample_columns`) and what it ran (:attr:`TaskResult.info`)."""

    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sample_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)


def split_scores(metrics: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Split flat ``eval/...`` metrics into (scores, counts and timings)."""
    scores: dict[str, float] = {}
    counts: dict[str, float] = {}
    for key, value in metrics.items():
        (counts if key.rsplit("/", 1)[-1] in COUNT_NAMES else scores)[key] = value
    return scores, counts


def format_scores(results: Mapping[str, Any]) -> str:
    """A short table of an evaluation's results (:func:`write_eval_results`' content): one
    line per score with its number of questions and seconds."""
    metrics = results["metrics"]
    scores, _ = split_scores(metrics)
    lines = [
        "",
        f"model         : {results['model']}",
        f"checkpoint    : {results['checkpoint'] or '-'}",
        f"run directory : {results['run_dir']}",
        f"{'metric':<36}{'score':>8}{'n':>7}{'seconds':>10}",
    ]
    for key, value in scores.items():
        prefix = key.rsplit("/", 1)[0]
        n = int(metrics.get(f"{prefix}/num_samples", 0))
        seconds = metrics.get(f"{prefix}/seconds", float("nan"))
        lines.append(f"{key:<36}{value:>8.4f}{n:>7d}{seconds:>10.1f}")
    return "\n".join(lines)


def check_eval_names(evals: Sequence[str]) -> list[str]:
    """Return ``evals`` without duplicates, or raise ValueError for a name that is no string.

    Names that are not built-in tasks are lm-eval's; they are checked when their data loads.
    """
    bad = [name for name in evals if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(f"evaluation task names must be non-empty strings, got {bad}")
    return list(dict.fromkeys(evals))


def load_eval_data(
    evals: Sequence[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    harness: HarnessOptions | None = None,
) -> EvalData:
    """Load the data each task of ``evals`` needs (local files or the hub; see the tasks).

    Raises:
        OptionError: (option ``tasks``) an lm-eval task that is unknown or cannot load its
            data, or lm-eval missing.
        ValueError: a built-in task's data file is missing or malformed (file and row named).
    """
    return {
        name: resolve_task(name, harness).load_data(data_dir) for name in check_eval_names(evals)
    }


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
    draft_tokens: int = DRAFT_TOKENS,
    max_length: int | None = None,
    progress: bool = False,
    harness: HarnessOptions | None = None,
) -> EvalOutput:
    """Run the tasks ``evals`` and return their metrics and samples.

    The model is put in eval mode for the run and its previous mode restored afterwards.
    ``data`` skips loading (pass the result of :func:`load_eval_data`, with the same
    ``harness``); otherwise the sets are loaded from ``data_dir``, ``MRPO_DATA_DIR`` or the
    hub. ``progress`` shows a progress bar per task (stderr). ``harness`` sets how lm-eval
    tasks (names that are not built-in tasks) are found and run.
    """
    evals = check_eval_names(evals)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions or None, got {limit}")
    data = data if data is not None else load_eval_data(evals, data_dir=data_dir, harness=harness)
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
                draft_tokens=draft_tokens,
                max_length=max_length,
                progress=name if progress else None,
            )
            task = resolve_task(name, harness)
            start = time.perf_counter()
            result = task.evaluate(model, tokenizer, data[name], settings)
            counts = {**result.counts, "seconds": time.perf_counter() - start}
            for key, value in {**result.metrics, **counts}.items():
                output.metrics[f"eval/{name}/{key}"] = float(value)
            output.samples[name] = result.samples
            output.sample_columns[name] = task.sample_columns
            if result.info:
                output.info[name] = result.info
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
    draft_tokens: int = DRAFT_TOKENS,
    max_length: int | None = None,
    harness: HarnessOptions | None = None,
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
        draft_tokens=draft_tokens,
        max_length=max_length,
        harness=harness,
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


def log_sample_tables(loggers: Sequence[Logger], output: EvalOutput, step: int) -> None:
    """Log each task's samples as a W&B table ``eval/<name>/samples`` (a ``step`` column
    first, then the task's ``sample_columns``).

    Loggers other than ``WandbLogger`` are skipped; tasks without ``sample_columns`` (such as
    TruthfulQA, whose samples are log-likelihood lists, and lm-eval tasks, whose records
    differ by task) stay in the jsonl file only.
    """
    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    for name, samples in output.samples.items():
        columns = output.sample_columns.get(name, ())
        if not columns:
            continue
        data = [[step] + [s[col] for col in columns] for s in samples]
        for logger in wandb_loggers:
            logger.log_table(
                f"eval/{name}/samples", columns=["step", *columns], data=data, step=step
            )


def record_evaluation(
    output_dir: Path,
    output: EvalOutput,
    results: dict[str, Any],
    loggers: Sequence[Logger],
    log_samples: bool,
) -> None:
    """Write an evaluation's record into ``output_dir``: ``samples.jsonl`` (this evaluation's
    samples only), the loggers' records (metrics at step 0, the GSM8K sample tables when
    ``log_samples``) and ``eval_results.json`` (``results`` with the W&B run directory)."""
    from mrpo.tracking.wandb import finish_wandb, wandb_run_dir

    samples = output_dir / SAMPLES_FILE
    samples.unlink(missing_ok=True)
    append_samples(
        samples, [{"eval": name, **s} for name, rows in output.samples.items() for s in rows]
    )
    for logger in loggers:
        logger.log_metrics(output.metrics, step=0)
    if log_samples:
        log_sample_tables(loggers, output, step=0)
    for logger in loggers:
        logger.finalize("success")  # flushes the CSV record
    results["wandb_dir"] = wandb_run_dir(loggers)
    write_eval_results(output_dir / RESULTS_FILE, results)
    finish_wandb(loggers, {**output.metrics, "model": results["model"]})
