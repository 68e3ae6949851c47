"""Benchmarks scored as lm-evaluation-harness scores them: GSM8K and TruthfulQA MC1/MC2.

- :mod:`mrpo.evals.tasks`: what a task is, and the task registry; :mod:`mrpo.evals.registry`
  registers the built-in tasks.
- :mod:`mrpo.evals.runner`: ``run_evals`` / ``run_eval_suite`` (named tasks with a limit),
  ``write_eval_results``.
- :mod:`mrpo.evals.gsm8k`, :mod:`mrpo.evals.truthfulqa`: the tasks (prompts, filters, scores).
- :mod:`mrpo.evals.loglik`, :mod:`mrpo.evals.generate`: batched scoring and generation.
- :mod:`mrpo.evals.metrics`: ``evaluate``-format metric scripts shipped with the package.
"""

from mrpo.evals.registry import EVAL_NAMES
from mrpo.evals.runner import (
    EvalData,
    EvalOutput,
    load_eval_data,
    run_eval_suite,
    run_evals,
    write_eval_results,
)
from mrpo.evals.tasks import EvalSettings, EvalTask, TaskResult, get_task, register_task

__all__ = [
    "EVAL_NAMES",
    "EvalData",
    "EvalOutput",
    "EvalSettings",
    "EvalTask",
    "TaskResult",
    "get_task",
    "load_eval_data",
    "register_task",
    "run_eval_suite",
    "run_evals",
    "write_eval_results",
]
