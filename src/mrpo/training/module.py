"""``PreferenceModule``: the LightningModule that glues policy, references and objective.

It owns no math: sequence log-probs come from :mod:`mrpo.logprobs`, the loss from an
objective of :mod:`mrpo.objectives`, the metrics from :mod:`mrpo.training.metrics`. Reference
log-probs arrive in the batch (cached mode) or from a live scorer called each step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from transformers import PreTrainedTokenizerBase, get_scheduler

from mrpo.data.types import PreferenceBatch
from mrpo.logprobs import DEFAULT_CHUNK_TOKENS, batch_sequence_logprobs, ld_active, ld_logps
from mrpo.objectives import Objective
from mrpo.references.moving import MovingReferences
from mrpo.training.checkpointing import RUN_IDENTITY_KEY
from mrpo.training.gradients import clip_and_measure
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
            counts it in ``train/skipped_batches``. Under data parallelism the ranks agree:
            a batch whose loss is non-finite on any rank is skipped (or stops) on all of them,
            so the ranks' weights never part. With gradient accumulation a skip drops the whole
            optimizer step the batch is part of.
        run_identity: what the run's checkpoints record about its settings and data (see
            :func:`mrpo.tracking.rundir.run_identity`), checked when a run resumes from them.
            counts it in ``train/skipped_batches``.
        parallelize: when set, called once with the policy and the device mesh from
            :meth:`configure_model` (FSDP shards the policy there); None leaves it whole.
        moving_references: copies of the policy that follow it (TR-DPO); a submodule, so
            their weights are in every checkpoint. Updated after each optimizer step on
            their schedule; ``live_references`` scores them.
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
        run_identity: Mapping[str, Any] | None = None,
        parallelize: Parallelize | None = None,
        moving_references: MovingReferences | None = None,
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
        self._drop_gradients = False
        self.run_identity = dict(run_identity or {})
        self.parallelize = parallelize
        self._parallelized = False
        self.moving_references = moving_references

    def configure_model(self) -> None:
        # Lightning calls this hook once per fit/validate/test; the policy is sharded once.
        if self.parallelize is not None and not self._parallelized:
            self.parallelize(self.policy, self.device_mesh)
            self._parallelized = True

    def forward_logps(self, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy log-probs of chosen and rejected responses, each (B,), in one forward (the
        batch's layout: padded rows, or packed ones); LD-DPO's (the objective's ``ld_alpha``)
        from the same forward's sums up to each pair's shared length."""
        alpha = self.objective.config.ld_alpha
        out = batch_sequence_logprobs(
            self.policy,
            batch,
            average=self.length_normalize,
            chunk_size=self.logprob_chunk_size,
            fused_head=self.fused_head,
            head_chunk_tokens=self.head_chunk_tokens,
            pair_shared=ld_active(alpha),
        )
        logps = ld_logps(out.logps, out.shared_logps, alpha)
        b = batch.num_pairs
        return logps[:b], logps[b:]

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
        counts = batch.response_token_counts()  # length-normalizing loss types read them
        b = batch.num_pairs
        out = self.objective(
            policy_chosen,
            policy_rejected,
            ref_chosen,
            ref_rejected,
            token_counts=(counts[:b], counts[b:]),
        )
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
        finite = bool(torch.isfinite(loss))
        # One decision for all ranks: a rank skipping alone would leave the others waiting in
        # the gradient all-reduce, and would part their weights.
        if self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return loss
        rows = batch.index.tolist()
        if self.on_nonfinite == "stop":
            value = loss.item() if not torch.isfinite(loss) else "on another rank"
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at global step {self.global_step}, "
                f"batch {batch_idx} (data rows {rows}); the last checkpoint is the last good one"
            )
        self.skipped_batches += 1
        self.log("train/skipped_batches", float(self.skipped_batches), batch_size=len(rows))
        # Not None: Lightning refuses a skipped step under data parallelism. A zero loss through
        # every trainable parameter runs backward (and DDP's gradient all-reduce) as any step
        # does, with zero gradients, and on_before_optimizer_step drops them, so the optimizer
        # changes nothing: no update, no moment decay.
        self._drop_gradients = True
        return torch.stack([p.sum() * 0.0 for p in self._trainable()]).sum()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # A parameter without a gradient is left alone by torch's optimizers. With gradient
        # accumulation the whole optimizer step the skipped batch belongs to is skipped.
        if self._drop_gradients:
            for p in self._trainable():
                p.grad = None
            self._drop_gradients = False

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: torch.optim.Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """The optimizer step, then the gradients dropped (``set_to_none``).

        Why: Lightning zeroes gradients inside the next step's closure, after its forward
        pass, so the last step's gradients (one float32 copy of every trainable weight: 0.54
        GB for SmolLM2-135M) would stay alive beside the next forward's activations. Nothing
        reads them after the step; with gradient accumulation this runs only once a window
        is complete. DeepSpeed's engine zeroes its own (partitioned) gradients in its step.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not isinstance(self.trainer.strategy, DeepSpeedStrategy):
            optimizer.zero_grad(set_to_none=True)
        if self.moving_references is not None:
            # Here, before the checkpoint callbacks of this batch, so a checkpoint written at
            # step n holds the update of step n. global_step counts this step only once the
            # hook returns: this is step global_step + 1.
            self.moving_references.step(self.policy, self.global_step + 1)

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def validation_step(self, batch: PreferenceBatch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Log ``train/grad_norm`` (before clipping), then clip as the Trainer is configured.

        Where each rank holds whole parameters (one device, DDP, whose gradients are already
        averaged) the norm is computed once and norm clipping reuses it; sharded strategies
        (FSDP, DeepSpeed) clip their own way and log no norm.
        """
        whole = isinstance(self.trainer.strategy, SingleDeviceStrategy | DDPStrategy)
        by_norm = (gradient_clip_algorithm or "norm") == "norm"
        if not whole:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = clip_and_measure(params, gradient_clip_val if by_norm else None)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
        if not by_norm:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def test_step(self, batch: PreferenceBatch, batch_idx: int) -> torch.Tensor:
        # The held-out test split: the same metrics as validation, under ``test/``.
        return self._shared_step(batch, "test")

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = self.optimizer_factory(self._trainable())
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
        checkpoint[RUN_IDENTITY_KEY] = self.run_identity

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("mrpo_objective_state")
        if state is not None:
            self.objective.load_state_dict(state)
