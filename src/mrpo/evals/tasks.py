"""The evaluation-task registry: what a task is, and the tasks known by name.

An :class:`EvalTask` bundles everything the runner, the training callback and ``mrpo-eval``
need to know about one benchmark: how to load its data (locally or from the hub), how to score
a model on the first ``limit`` items, and which sample fields go into a W&B table. Nothing
outside a task's own folder tests task names.

Adding a task: docs/architecture.md, "Where do I add … an evaluation task". Its metrics are
logged as ``eval/<name>/<metric>``. A name that is not registered is an lm-evaluation-harness task
(:func:`mrpo.evals.registry.resolve_task`), run by lm-eval itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

COUNT_NAMES = ("num_samples", "num_requests", "generated_tokens", "seconds")
"""Last parts of the ``eval/<name>/...`` keys that are counts or timings, not scores."""


@dataclass(frozen=True)
class EvalSettings:
    """How one evaluation run is sized.

    Attributes:
        limit: the first ``limit`` items of the task's set (in data set order); None: all.
        batch_size: prompts or scored continuations per forward pass.
        max_new_tokens: generation budget per item (generation tasks).
        draft_tokens: tokens guessed per sequence and decoding step (generation tasks; 0: one
            token per step; :mod:`mrpo.evals.drafts`).
        max_length: the model's context size (None: from the model config).
        progress: label of a progress bar (None: no bar).
    """

    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 256
    draft_tokens: int = 8
    max_length: int | None = None
    progress: str | None = None


@dataclass
class TaskResult:
    """One task's outcome.

    Attributes:
        metrics: scores, by metric name (``strict_match``, ``mc1``, ...), each a float.
        samples: one dict per item (the fields the task documents).
        counts: counts of the run (``num_samples``, ``generated_tokens``, ...); the runner
            adds ``seconds``.
        info: what the task ran, as plain JSON (an lm-eval task's versions, shots and
            configs); recorded next to the scores, never logged as metrics.
    """

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)
    counts: Mapping[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


TaskData = Any
"""Whatever a task's loader returns and its ``evaluate`` takes (records, few-shot pools, ...)."""
Loader = Callable[[str | os.PathLike[str] | None], TaskData]
Evaluator = Callable[[PreTrainedModel, PreTrainedTokenizerBase, TaskData, EvalSettings], TaskResult]


@dataclass(frozen=True)
class EvalTask:
    """A benchmark known by name.

    Attributes:
        name: the name in ``eval.tasks`` and in the metric keys ``eval/<name>/...``.
        description: one line for listings and docs.
        load_data: ``data_dir -> data``; reads ``<data_dir>`` (or ``$MRPO_DATA_DIR``) when it
            holds the task's files, else the hub. Raises ``ValueError`` naming the file or row.
        evaluate: ``(model, tokenizer, data, settings) -> TaskResult``, the model already in
            eval mode and under ``torch.no_grad`` when called by the runner.
        sample_columns: fields of each sample logged as a W&B table (empty: samples go to the
            samples file only).
    """

    name: str
    description: str
    load_data: Loader
    evaluate: Evaluator
    sample_columns: tuple[str, ...] = ()


_TASKS: dict[str, EvalTask] = {}


def register_task(task: EvalTask) -> EvalTask:
    """Add ``task`` to the registry (a name may be registered once); return it."""
    if task.name in _TASKS and _TASKS[task.name] is not task:
        raise ValueError(f"an evaluation task named {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def registered_tasks() -> Mapping[str, EvalTask]:
    """Every registered task, by name (:mod:`mrpo.evals.registry` registers the built-in ones)."""
    return dict(_TASKS)
