"""``PreferenceModule``: the LightningModule that glues policy, references and objective.

It owns no math: sequence log-probs come from :mod:`mrpo.logprobs`, the loss from an
objective of :mod:`mrpo.objectives`, the metrics from :mod:`mrpo.training.metrics`. Reference
log-probs arrive in the batch (cached mode) or from a live scorer called each step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from transformers import PreTrainedTokenizerBase, get_scheduler

from mrpo.data.types import PreferenceBatch
from mrpo.logprobs import DEFAULT_CHUNK_TOKENS, model_sequence_logprobs
from mrpo.objectives import Objective
from mrpo.training.metrics import preference_metrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]
LiveReferenceFn = Callable[[PreferenceBatch], tuple[torch.Tensor, torch.Tensor]]
Parallelize = Callable[[torch.nn.Module, Any], None]
"""Shards the policy in place given the strategy's device mesh (:mod:`mrpo.models.parallel`)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class PreferenceModule(L.LightningModule):
    """Trains ``policy`` with a preference objective against K frozen references.

    Args:
        policy: the causal LM being trained (optionally a peft model).
        tokenizer: its tokenizer (used by evaluation callbacks and for saving).
        objective: a callable from :func:`mrpo.objectives.get_objective`.
        optimizer_factory: ``params -> Optimizer`` (a Hydra partial in the config).
        scheduler_name: a :func:`transformers.get_scheduler` name.
        warmup_ratio: fraction of the training steps used for linear warm-up.
        length_normalize: use mean per-token policy log-probs instead of sums.
        logprob_chunk_size: rows of logits reduced to log-probs at a time (see
            :func:`mrpo.logprobs.sequence_logprobs`); None does all rows at once.
        fused_head: compute the policy's log-probs through the fused LM head where the
            model allows it (:func:`mrpo.logprobs.model_sequence_logprobs`).
        head_chunk_tokens: scored tokens per LM-head tile on the fused path.
        live_references: when set, called on every batch to get ``(ref_chosen, ref_rejected)``,
            each (K, B); otherwise the batch must carry cached reference log-probs.
        on_nonfinite: what a NaN/inf training loss does: ``"stop"`` raises
            :class:`NonFiniteLossError` naming the step and the batch's rows (checkpoints
            already written stay the last good ones); ``"skip"`` skips the optimizer step and
            counts it in ``train/skipped_batches``.
        parallelize: when set, called once with the policy and the device mesh from
            :meth:`configure_model` (FSDP shards the policy there); None leaves it whole.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        objective: Objective,
        optimizer_factory: OptimizerFactory,
        *,
        scheduler_name: str = "cosine",
        warmup_ratio: float = 0.0,
        length_normalize: bool = False,
        logprob_chunk_size: int | None = None,
        fused_head: bool = True,
        head_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        live_references: LiveReferenceFn | None = None,
        on_nonfinite: str = "stop",
        parallelize: Parallelize | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.tokenizer = tokenizer
        self.objective = objective
        self.optimizer_factory = optimizer_factory
        self.scheduler_name = scheduler_name
        self.warmup_ratio = warmup_ratio
        self.length_normalize = length_normalize
        self.logprob_chunk_size = logprob_chunk_size
        self.fused_head = fused_head
        self.head_chunk_tokens = head_chunk_tokens
        self.live_references = live_references
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.skipped_batches = 0
        self.parallelize = parallelize
        self._parallelized = False

    def configure_model(self) -> None:
        # Lightning calls this hook once per fit/validate/test; the policy is sharded once.
        if self.parallelize is not None and not self._parallelized:
            self.parallelize(self.policy, self.device_mesh)
            self._parallelized = True

    def forward_logps(self, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy log-probs of chosen and rejected responses, each (B,), in one forward."""
        out = model_sequence_logprobs(
            self.policy,
            batch.input_ids,
            batch.attention_mask,
            batch.labels,
            average=self.length_normalize,
            chunk_size=self.logprob_chunk_size,
            fused_head=self.fused_head,
            head_chunk_tokens=self.head_chunk_tokens,
        )
        b = batch.num_pairs
        return out.logps[:b], out.logps[b:]

    def reference_logps(self, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs (K, B) for chosen and rejected: cached in the batch, or live."""
        if self.live_references is not None:
            return self.live_references(batch)
        if batch.ref_chosen is None or batch.ref_rejected is None:
            raise RuntimeError(
                "batch carries no reference log-probs: build the collator with the reference "
                "table (cached mode) or give the module live references"
            )
        return batch.ref_chosen, batch.ref_rejected

    def _shared_step(self, batch: PreferenceBatch, stage: str) -> torch.Tensor:
        policy_chosen, policy_rejected = self.forward_logps(batch)
        ref_chosen, ref_rejected = self.reference_logps(batch)
        out = self.objective(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
        loss = out.losses.mean()
        # Only training batches with a finite loss advance stateful weightings (the sliding
        # window): a skipped non-finite batch must not poison the weights of later batches.
        if stage == "train" and torch.isfinite(loss):
            self.objective.observe(ref_chosen, ref_rejected)
        metrics = preference_metrics(out, policy_chosen, policy_rejected, batch)
        on_step = stage == "train"
        # Training metrics per step; validation metrics averaged over the whole split.
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=batch.num_pairs,
            sync_dist=not on_step,
        )
        self.log(
            f"{stage}/loss",
            loss.detach(),
            on_step=on_step,
            on_epoch=not on_step,
            prog_bar=True,
            batch_size=batch.num_pairs,
            sync_dist=not on_step,
        )
        return loss

    def training_step(self, batch: PreferenceBatch, batch_idx: int) -> torch.Tensor | None:
        loss = self._shared_step(batch, "train")
        if torch.isfinite(loss):
            return loss
        rows = batch.index.tolist()
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at global step {self.global_step}, "
                f"batch {batch_idx} (data rows {rows}); the last checkpoint is the last good one"
            )
        self.skipped_batches += 1
        self.log("train/skipped_batches", float(self.skipped_batches), batch_size=len(rows))
        # Lightning skips backward; the optimizer step finds no gradients and changes nothing.
        return None

    def validation_step(self, batch: PreferenceBatch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: PreferenceBatch, batch_idx: int) -> torch.Tensor:
        # The held-out test split: the same metrics as validation, under ``test/``.
        return self._shared_step(batch, "test")

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(
            self.scheduler_name,
            optimizer,
            num_warmup_steps=int(self.warmup_ratio * total),
            num_training_steps=total,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Stateful weighting strategies (sliding window, bandits) must resume where they were.
        checkpoint["mrpo_objective_state"] = self.objective.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("mrpo_objective_state")
        if state is not None:
            self.objective.load_state_dict(state)
