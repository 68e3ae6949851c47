"""``EvalCallback``: benchmark the policy while it trains (GSM8K, TruthfulQA, any lm-eval task;
see mrpo.evals).

Every ``every_n_steps`` optimizer steps the callback evaluates ``pl_module.policy`` with
``pl_module.tokenizer`` on a fixed subset (the first ``limit`` questions of each set, in data set
order, so that points of the curve are comparable), and once more when training ends with
``final_limit`` questions (``None``: the full sets; ``0``: skip the final evaluation). The
evaluation data is loaded when fitting starts, so a task that cannot load its data stops the
run before its first step.

Logging: metrics go to every logger of the trainer with ``log_metrics`` at the current global
step (``LightningModule.log`` from a batch hook is flushed only every ``log_every_n_steps``, which
would drop evaluation steps), and into ``trainer.callback_metrics`` so checkpoints can monitor
them. Samples of every evaluation are appended to ``<root>/eval/samples.jsonl`` (``root`` is the
trainer's ``default_root_dir`` unless ``output_dir`` is given) and, with a W&B logger, GSM8K
samples are logged as a table ``eval/<name>/samples``. The final metrics (and what each task
ran, e.g. an lm-eval task's versions and configs) are also written to
``<root>/eval/final_results.json``; the metrics are kept in ``final_metrics``.

The policy is evaluated without gradients, in eval mode, and put back in its previous mode.
Evaluation runs on global rank 0 only (other ranks wait at a barrier); the model must be whole
on that rank (single device or DDP, not sharded).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from transformers import PreTrainedTokenizerBase

from mrpo.evals.generate import DRAFT_TOKENS
from mrpo.evals.gsm8k import MAX_NEW_TOKENS
from mrpo.evals.harness.options import HarnessOptions
from mrpo.evals.runner import (
    EvalData,
    EvalOutput,
    append_samples,
    check_eval_names,
    load_eval_data,
    log_sample_tables,
    run_eval_suite,
    split_scores,
    write_eval_results,
)

log = logging.getLogger(__name__)

TokenizerSource = PreTrainedTokenizerBase | Callable[[], PreTrainedTokenizerBase] | None


class EvalCallback(L.Callback):
    """Evaluate the policy every N steps on a subset and at the end of training.

    Args:
        evals: evaluation task names (see :mod:`mrpo.evals.registry`).
        every_n_steps: evaluate after every this many optimizer steps; 0 disables periodic runs.
        limit: questions per set in periodic runs (the first ones); None for all.
        final_limit: questions per set at the end of training; None for all, 0 to skip.
        tokenizer: a tokenizer or a zero-argument function returning one; default
            ``pl_module.tokenizer``.
        batch_size: prompts or scored continuations per forward pass.
        max_new_tokens: generation budget per GSM8K answer.
        draft_tokens: tokens guessed per GSM8K decoding step (0: off; the same text).
        log_samples: log GSM8K samples as a W&B table when a WandbLogger is attached (samples
            are written to the jsonl file in any case).
        data_dir: local data folder (default ``MRPO_DATA_DIR``, then the hub).
        output_dir: where ``eval/`` files go; default the trainer's ``default_root_dir``.
        data: the tasks' data already loaded (:func:`mrpo.evals.runner.load_eval_data`, as the
            pre-flight of ``mrpo-train`` does); None loads it at the first evaluation.
        harness: how lm-eval tasks (names that are not built-in tasks) are found and run.
    """

    def __init__(
        self,
        evals: Sequence[str],
        every_n_steps: int = 0,
        limit: int | None = 50,
        final_limit: int | None = None,
        *,
        tokenizer: TokenizerSource = None,
        batch_size: int = 16,
        max_new_tokens: int = MAX_NEW_TOKENS,
        draft_tokens: int = DRAFT_TOKENS,
        log_samples: bool = True,
        data_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        data: EvalData | None = None,
        harness: HarnessOptions | None = None,
    ) -> None:
        super().__init__()
        self.evals = check_eval_names(evals)
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        for name, value in (("limit", limit), ("final_limit", final_limit)):
            if value is not None and value < (1 if name == "limit" else 0):
                raise ValueError(f"{name} must be a positive number of questions or None")
        self.every_n_steps = every_n_steps
        self.limit = limit
        self.final_limit = final_limit
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.draft_tokens = draft_tokens
        self.log_samples = log_samples
        self.data_dir = data_dir
        self.output_dir = output_dir
        self.harness = harness
        self.final_metrics: dict[str, float] = {}
        self._data: EvalData | None = data
        self._last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Load before the first step: a task whose data is missing fails now, not mid-run.
        if stage == "fit" and trainer.is_global_zero and self.evals:
            self._load_data()

    def _load_data(self) -> EvalData:
        if self._data is None:
            self._data = load_eval_data(self.evals, data_dir=self.data_dir, harness=self.harness)
        return self._data

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        # With gradient accumulation this hook runs on every micro-batch; evaluate once per step.
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and step != self._last_step:
            self._evaluate(trainer, pl_module, self.limit, final=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.final_limit != 0 and self.evals:
            self._evaluate(trainer, pl_module, self.final_limit, final=True)

    def _evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, limit: int | None, *, final: bool
    ) -> None:
        step = trainer.global_step
        self._last_step = step
        if trainer.is_global_zero:
            output = self._run(pl_module, limit)
            self._publish(trainer, output, step, final=final)
        trainer.strategy.barrier("mrpo_eval")

    def _run(self, pl_module: L.LightningModule, limit: int | None) -> EvalOutput:
        data = self._load_data()
        tokenizer = self._resolve_tokenizer(pl_module)
        with torch.no_grad():
            return run_eval_suite(
                cast(Any, pl_module).policy,
                tokenizer,
                self.evals,
                limit=limit,
                data=data,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                draft_tokens=self.draft_tokens,
                progress=True,  # only rank 0 evaluates
                harness=self.harness,
            )

    def _resolve_tokenizer(self, pl_module: L.LightningModule) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            tokenizer: PreTrainedTokenizerBase = cast(Any, pl_module).tokenizer
            return tokenizer
        if isinstance(self.tokenizer, PreTrainedTokenizerBase):
            return self.tokenizer
        return self.tokenizer()

    def _publish(self, trainer: L.Trainer, output: EvalOutput, step: int, *, final: bool) -> None:
        metrics = output.metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        root = Path(self.output_dir or trainer.default_root_dir) / "eval"
        rows = [
            {"step": step, "final": final, "eval": name, **sample}
            for name, samples in output.samples.items()
            for sample in samples
        ]
        append_samples(root / "samples.jsonl", rows)
        if final:
            self.final_metrics = dict(metrics)
            final_results = {"step": step, "metrics": metrics, "tasks": output.info}
            write_eval_results(root / "final_results.json", final_results)
        if self.log_samples:
            log_sample_tables(trainer.loggers, output, step)
        summary = ", ".join(f"{k}={v:.4f}" for k, v in split_scores(metrics)[0].items())
        log.info("step %d evaluation%s: %s", step, " (final)" if final else "", summary)


def final_eval_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The benchmark scores at the end of a run: the ``eval/...`` metrics last logged, updated
    with the final evaluation's, which :class:`EvalCallback` keeps itself (the validation after
    fit resets ``callback_metrics``)."""
    metrics = trainer.callback_metrics.items()
    evals = {k: float(v) for k, v in metrics if k.startswith("eval/")}
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, EvalCallback):
            evals.update(callback.final_metrics)
    return evals
