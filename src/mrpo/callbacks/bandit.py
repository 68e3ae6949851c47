"""Drives the Thompson-sampling weighting: pick an arm before each step, reward it after.

The bandit (:class:`mrpo.objectives.ThompsonSampling`) is explicit by design; this callback is
the training loop's side of the protocol. Before the first micro-batch of an optimizer step it
calls ``select()``, so every micro-batch of that step (``trainer.accumulate_grad_batches``) takes
a single-reference DPO step against the same sampled reference. After the optimizer step it
scores a fixed feedback subsample of the validation pairs and calls ``update(arm, improved)``
with ``improved`` = the reference-free policy margin accuracy went up strictly (a tie is not an
improvement): one draw and one reward per optimizer step, whatever the accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from mrpo.data.types import PreferenceBatch
from mrpo.objectives import WeightStrategy
from mrpo.training.metrics import policy_margin_accuracy
from mrpo.training.module import PreferenceModule


class ThompsonFeedback(L.Callback):
    """Connects a Thompson-sampling weighting to the training loop.

    Args:
        feedback_batches: the fixed validation subsample, already collated (policy
            tokenizer); scored after every optimizer step.
    """

    def __init__(self, feedback_batches: Sequence[PreferenceBatch]) -> None:
        if not feedback_batches:
            raise ValueError("the Thompson feedback subsample is empty")
        self.feedback_batches = list(feedback_batches)
        self.arm: int | None = None
        self.previous: float | None = None
        self._drawn_at_step = -1  # trainer.global_step when self.arm was drawn

    def _strategy(self, pl_module: L.LightningModule) -> Any:
        strategy: WeightStrategy = _preference_module(pl_module).objective.weighting
        return strategy  # the feedback protocol (select, update, current_arm) of needs_feedback

    @torch.no_grad()
    def feedback_accuracy(self, pl_module: L.LightningModule) -> float:
        """Policy margin accuracy on the feedback subsample (eval mode, no gradient)."""
        module = _preference_module(pl_module)
        was_training = module.training
        module.eval()
        hits, total = 0.0, 0
        for batch in self.feedback_batches:
            batch = batch.to(module.device)
            chosen, rejected = module.forward_logps(batch)
            counts = batch.response_token_counts()
            b = batch.num_pairs
            acc = policy_margin_accuracy(chosen, rejected, counts[:b], counts[b:])
            hits += float(acc) * b
            total += b
        module.train(was_training)
        return hits / total

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.previous is None:
            self.previous = self.feedback_accuracy(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation scores the objective against the arm the bandit last chose; before the
        # first training step there is none yet, so draw one.
        strategy = self._strategy(pl_module)
        if strategy.current_arm is None:
            strategy.select()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning runs this for every micro-batch; the arm holds until the optimizer steps.
        if self.arm is None:
            self.arm = self._strategy(pl_module).select()
            self._drawn_at_step = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # global_step counts optimizer steps: unchanged means a micro-batch inside the window.
        if self.arm is None or trainer.global_step == self._drawn_at_step:
            return
        accuracy = self.feedback_accuracy(pl_module)
        improved = self.previous is not None and accuracy > self.previous
        self._strategy(pl_module).update(self.arm, improved=improved)
        pl_module.log_dict(
            {"train/bandit/arm": float(self.arm), "train/bandit/feedback_accuracy": accuracy},
            on_step=True,
            on_epoch=False,
            batch_size=batch.num_pairs,
        )
        self.previous = accuracy
        self.arm = None

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous = state_dict.get("previous")


def _preference_module(pl_module: L.LightningModule) -> PreferenceModule:
    if not isinstance(pl_module, PreferenceModule):
        raise TypeError(
            f"ThompsonFeedback drives a PreferenceModule, got {type(pl_module).__name__}"
        )
    return pl_module
