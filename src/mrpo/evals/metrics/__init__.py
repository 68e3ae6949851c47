"""Metric modules in the ``evaluate`` library's format, shipped as files of this package.

The hub's metric scripts cannot be fetched offline, so the metrics the evaluations need live
here as ordinary ``evaluate`` scripts (an ``evaluate.Metric`` subclass per file) and are loaded
the way hub scripts are, with ``evaluate.load(<path to the .py file>)``:

- ``gsm8k_exact_match``: lm-evaluation-harness exact match with ``regexes_to_ignore``.
- ``truthfulqa_mc`` (configs ``mc1``, ``mc2``): TruthfulQA scores from per-choice log-likelihoods.
"""

from __future__ import annotations

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("gsm8k_exact_match", "truthfulqa_mc")


def metric_path(name: str) -> Path:
    """Path of the metric script ``name`` (one of ``METRIC_NAMES``)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")
    return METRICS_DIR / f"{name}.py"


def load_metric(name: str, config_name: str | None = None) -> evaluate.EvaluationModule:
    """``evaluate.load`` the packaged metric ``name``, kept in memory (no cache files written)."""
    return evaluate.load(str(metric_path(name)), config_name, keep_in_memory=True)
