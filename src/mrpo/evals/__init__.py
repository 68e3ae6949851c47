"""Benchmarks scored as lm-evaluation-harness scores them: GSM8K and TruthfulQA MC1/MC2.

- :mod:`mrpo.evals.runner`: ``run_evals`` / ``run_eval_suite`` (named evaluations with a limit),
  ``write_eval_results``.
- :mod:`mrpo.evals.gsm8k`, :mod:`mrpo.evals.truthfulqa`: the tasks (prompts, filters, scores).
- :mod:`mrpo.evals.loglik`, :mod:`mrpo.evals.generate`: batched scoring and generation.
- :mod:`mrpo.evals.metrics`: ``evaluate``-format metric scripts shipped with the package.
- :mod:`mrpo.evals.preference`: preference accuracy over a held-out set.
"""

from mrpo.evals.runner import (
    EVAL_NAMES,
    EvalData,
    EvalOutput,
    load_eval_data,
    run_eval_suite,
    run_evals,
    write_eval_results,
)

__all__ = [
    "EVAL_NAMES",
    "EvalData",
    "EvalOutput",
    "load_eval_data",
    "run_eval_suite",
    "run_evals",
    "write_eval_results",
]
