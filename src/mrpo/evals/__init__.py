"""Benchmarks scored as lm-evaluation-harness scores them: GSM8K and TruthfulQA MC1/MC2.

- :mod:`mrpo.evals.tasks`: what a task is, and the task registry; :mod:`mrpo.evals.registry`
  registers the built-in tasks.
- :mod:`mrpo.evals.runner`: ``run_evals`` / ``run_eval_suite`` (named tasks with a limit),
  ``write_eval_results``, and ``EvalConfig``, the settings of the ``eval`` config group.
- :mod:`mrpo.evals.gsm8k`, :mod:`mrpo.evals.truthfulqa`: one folder per task (the task in its
  ``__init__``, ``records``, ``loader``, ``metric``), sharing :mod:`mrpo.evals.sources`.
- :mod:`mrpo.evals.loglik`, :mod:`mrpo.evals.generate`: batched scoring and generation.
"""

from mrpo.evals.registry import EVAL_NAMES
from mrpo.evals.runner import (
    EvalConfig,
    EvalData,
    EvalOutput,
    load_eval_data,
    run_eval_suite,
    run_evals,
    write_eval_results,
)
from mrpo.evals.tasks import EvalSettings, EvalTask, TaskResult, register_task

__all__ = [
    "EVAL_NAMES",
    "EvalConfig",
    "EvalData",
    "EvalOutput",
    "EvalSettings",
    "EvalTask",
    "TaskResult",
    "load_eval_data",
    "register_task",
    "run_eval_suite",
    "run_evals",
    "write_eval_results",
]
