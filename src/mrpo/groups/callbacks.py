"""The run's Lightning callbacks, built from the ``callbacks``, ``trainer``, ``eval``,
``weights`` and ``data`` groups (each group's own settings: :mod:`mrpo.callbacks.settings`)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from transformers import PreTrainedTokenizerBase

from mrpo.callbacks.bandit import ThompsonFeedback, feedback_batches
from mrpo.callbacks.eval import EvalCallback
from mrpo.callbacks.progress import RunProgressBar
from mrpo.callbacks.settings import build_extra_callbacks, checkpoint_callbacks
from mrpo.callbacks.throughput import ThroughputMonitor
from mrpo.config.schema import TrainConfig
from mrpo.data.pipeline import PreparedData
from mrpo.evals.runner import EvalData
from mrpo.objectives import Objective

__all__ = ["build_callbacks"]


def build_callbacks(
    cfg: TrainConfig,
    output_dir: Path,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    objective: Objective,
    eval_data: EvalData | None = None,
) -> list[Callback]:
    """The throughput monitor, checkpointing, learning-rate monitor, evaluation, the
    weighting's feedback loop, and any other callback the config names by ``_target_``."""
    # First, so that a step's time ends before later callbacks (evaluation) run.
    callbacks: list[Callback] = [ThroughputMonitor()]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(RunProgressBar())  # loss, tokens/s and step time, never cut
    if cfg.callbacks.checkpoint is not None:
        callbacks.extend(checkpoint_callbacks(cfg.callbacks.checkpoint, output_dir / "checkpoints"))
    if cfg.callbacks.lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.eval.tasks:
        # The callback takes the eval group's settings by their names (tasks: its first).
        settings: dict[str, Any] = {f.name: getattr(cfg.eval, f.name) for f in fields(cfg.eval)}
        settings.update(data_dir=cfg.paths.data_dir, output_dir=output_dir, data=eval_data)
        callbacks.append(EvalCallback(settings.pop("tasks"), **settings))
    strategy = objective.weighting
    if strategy.needs_feedback:
        size = int(getattr(strategy, "feedback_size"))  # noqa: B009  # declared with the flag
        pad, batch_size = tokenizer.pad_token_id, cfg.data.eval_batch_size
        callbacks.append(ThompsonFeedback(feedback_batches(data.val_pairs, pad, size, batch_size)))
    # Any other Lightning callback, lightning-hydra-template style:
    # +callbacks.extra.early_stop._target_=lightning.pytorch.callbacks.EarlyStopping ...
    return [*callbacks, *build_extra_callbacks(cfg.callbacks)]
