"""The ``eval`` group: benchmarks during training and in ``mrpo-eval``."""

from __future__ import annotations

from dataclasses import dataclass, field

from mrpo.domains import Flag, Items, Number, Text, setting
from mrpo.evals.harness.options import HarnessOptions

__all__ = ["EvalConfig"]


@dataclass
class EvalConfig:
    """Benchmarks: run by the evaluation callback during training, and by ``mrpo-eval``
    (which uses ``tasks``, ``limit``, ``batch_size``, ``max_new_tokens``, ``draft_tokens``,
    ``log_samples`` and ``harness``; ``every_n_steps`` and ``final_limit`` concern training
    only). A task name that is not built in is an lm-evaluation-harness task, run with
    ``harness``'s settings."""

    tasks: list[str] = setting([], Items(Text()))
    every_n_steps: int = setting(0, Number(int, ge=0))
    limit: int | None = setting(50, Number(int, ge=1, nullable=True))
    final_limit: int | None = setting(None, Number(int, ge=0, nullable=True))
    batch_size: int = setting(16, Number(int, ge=1))
    max_new_tokens: int = setting(256, Number(int, ge=1))
    draft_tokens: int = setting(8, Number(int, ge=0))
    log_samples: bool = setting(True, Flag())
    harness: HarnessOptions = field(default_factory=HarnessOptions)
