"""Drives the Thompson-sampling weighting: pick an arm for each optimizer step, reward it after.

The bandit (:class:`mrpo.objectives.ThompsonSampling`) is explicit by design; this callback is
the training loop's side of the protocol, one draw and one reward per optimizer step whatever
``trainer.accumulate_grad_batches``: the first micro-batch of a step calls ``select()``, so all
of them take a single-reference DPO step against the same arm; after the step (Lightning's
``on_before_optimizer_step`` marks its micro-batch) it scores a fixed feedback subsample of the
validation pairs and calls ``update(arm, improved)``, ``improved`` = the reference-free policy
margin accuracy went up strictly (a tie is not an improvement).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from mrpo.data.collate import PreferenceCollator
from mrpo.data.types import PreferenceBatch, TokenizedPair
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
        self.arm: int | None = None  # drawn for the optimizer step under way
        self.previous: float | None = None
        self._stepping = False  # the optimizer step of self.arm ran in this micro-batch

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
        # Validation scores against the arm last drawn; before the first step there is none.
        strategy = self._strategy(pl_module)
        if strategy.current_arm is None:
            strategy.select()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning runs this for every micro-batch; the arm holds until its optimizer step.
        if self.arm is None:
            self.arm = self._strategy(pl_module).select()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # Once per step, after the window's last backward: reward at this micro-batch's end.
        self._stepping = True

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._stepping or self.arm is None:
            return  # a micro-batch inside the accumulation window: no step yet
        self._stepping = False
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


def feedback_batches(
    val_pairs: Sequence[TokenizedPair], pad_token_id: int, size: int, batch_size: int
) -> list[PreferenceBatch]:
    """The fixed validation subsample a feedback weighting is rewarded on (the first pairs)."""
    pairs = val_pairs[:size]
    collate = PreferenceCollator(pad_token_id)
    return [collate(pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]
