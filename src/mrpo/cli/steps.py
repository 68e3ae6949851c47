"""Steps of a training run, each from the typed config to plain objects.

:mod:`mrpo.cli.train` calls these in order. They take the typed
:class:`~mrpo.config.TrainConfig` dataclasses (never OmegaConf objects) and hand plain
arguments to the library modules; the cheap objects every check also builds (the objective, the
reference specs) come from the groups' builders (:mod:`mrpo.groups`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from transformers import PreTrainedTokenizerBase

import mrpo.data.pipeline
import mrpo.models.policy
from mrpo.callbacks import EvalCallback, ThompsonFeedback, ThroughputMonitor
from mrpo.callbacks.progress import RunProgressBar
from mrpo.config.schema import TrainConfig
from mrpo.data.collate import PreferenceCollator
from mrpo.data.pipeline import PreparedData, pair_layout, tokenized_cache_dir
from mrpo.data.types import PreferenceBatch
from mrpo.errors import option_prefix
from mrpo.evals.runner import EvalData
from mrpo.groups.callbacks import build_extra_callbacks, checkpoint_callbacks
from mrpo.groups.references import num_references, reference_specs
from mrpo.groups.trainer import policy_device
from mrpo.models import load_tokenizer
from mrpo.models.policy import model_cache_dir
from mrpo.objectives import Objective
from mrpo.references import LiveReferences, ReferenceEnsemble, ReferenceSpec, RefTable
from mrpo.references.sharding import detect_ranks

log = logging.getLogger("mrpo.train")


@dataclass
class PreparedReferences:
    """The static references (moving ones are never cached) and, in cached mode, their
    log-prob table over every row; ``ensemble`` is None when every reference moves."""

    ensemble: ReferenceEnsemble | None
    table: RefTable | None
    stats: dict[str, Any] = field(default_factory=dict)


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """The run's data (:func:`mrpo.data.pipeline.prepare_data`), tokenized by the policy's
    tokenizer; a split the data cannot give is a config error naming its ``data`` key."""
    m, cache = cfg.model, model_cache_dir(cfg.paths.cache_dir)
    tokenizer = load_tokenizer(
        m.tokenizer or m.source, chat_template=m.chat_template, cache_dir=cache
    )
    with option_prefix("data"):
        return mrpo.data.pipeline.prepare_data(
            cfg.data,
            tokenizer,
            data_dir=cfg.paths.data_dir,
            cache_dir=tokenized_cache_dir(cfg.paths.cache_dir),
            references=lambda: build_ensemble(cfg),
        )


def build_ensemble(
    cfg: TrainConfig, specs: Sequence[ReferenceSpec] | None = None
) -> ReferenceEnsemble:
    """The run's K references (or ``specs``, some of them), with their cache and ranks."""
    return ReferenceEnsemble(
        reference_specs(cfg) if specs is None else specs,
        policy_source=cfg.model.source,
        policy_tokenizer=cfg.model.tokenizer,
        policy_chat_template=cfg.model.chat_template,
        max_length=cfg.data.max_length,
        max_prompt_length=cfg.data.max_prompt_length,
        cache_dir=Path(cfg.paths.cache_dir) / "reflogps",
        batch_size=cfg.references.batch_size,
        model_cache_dir=model_cache_dir(cfg.paths.cache_dir),
        ranks=detect_ranks() if cfg.references.split_across_ranks else None,
        shard_timeout=cfg.references.shard_timeout_s,
        lock_timeout=cfg.references.lock_timeout_s,
        layout=pair_layout(cfg.data),
        tokenized_cache_dir=tokenized_cache_dir(cfg.paths.cache_dir),
        num_proc=cfg.data.num_proc,
        fused_head=cfg.model.fused_lm_head,
        ld_alpha=cfg.loss.ld_alpha,
    )


def prepare_references(cfg: TrainConfig, data: PreparedData) -> PreparedReferences:
    """Fill (or reuse) the reference log-prob cache for every row the run needs.

    In cached mode every reference scores the train and validation rows once, one model in
    memory at a time, and later runs with the same references and rows read the cache. In
    live mode only the validation rows are cached (offline weightings fit on them) and the
    references score training batches as they come. Moving references (``source: moving``)
    are left out: they are scored live, with their weights of the moment.
    """
    specs = reference_specs(cfg)
    static = [s for s in specs if not s.is_moving]
    # The run's record names the references it never cached (stage=cache included).
    moving = (
        {"not_cached": [s.name for s in specs if s.is_moving]} if len(static) < len(specs) else {}
    )
    if not static:
        return PreparedReferences(None, None, moving)
    ensemble = build_ensemble(cfg, static)
    if cfg.references.mode == "live":
        pre = ensemble.precompute(data.val_examples)
        return PreparedReferences(ensemble, None, {**asdict(pre.stats), **moving})
    table = ensemble.table(data.all_examples)
    return PreparedReferences(ensemble, table, {**asdict(ensemble.stats), **moving})


def live_references(
    refs: PreparedReferences, policy: torch.nn.Module, data: PreparedData
) -> LiveReferences | None:
    """A per-batch scorer of the static references in live mode (None in cached mode, or
    when there is none)."""
    if refs.table is not None or refs.ensemble is None:
        return None
    return LiveReferences(refs.ensemble, policy=policy, examples=data.all_examples)


def fit_offline_weights(objective: Objective, refs: PreparedReferences, data: PreparedData) -> None:
    """Fit validation-based weightings (vdw, vaw) on the references' validation log-probs."""
    strategy = objective.weighting
    if not strategy.fits_on_validation:
        return
    assert refs.ensemble is not None, "refused with moving references (mrpo.config.moving)"
    val = refs.ensemble.precompute(data.val_examples, progress=False).logps
    index = torch.tensor([ex.index for ex in data.val_examples])
    # Summed log-probs (LD-DPO's where loss.ld_alpha is on): the strategy divides by length.
    sums = [ref.select(index).values(ld_alpha=refs.ensemble.ld_alpha) for ref in val]
    rows = [ref.select(index) for ref in val]
    strategy.fit(  # type: ignore[attr-defined]  # declared by fits_on_validation
        torch.stack([chosen for chosen, _ in sums]),
        torch.stack([rejected for _, rejected in sums]),
        torch.stack([r.chosen_tokens for r in rows]),
        torch.stack([r.rejected_tokens for r in rows]),
    )
    log.info("fitted %s weights: %s", strategy.name, getattr(strategy, "fitted", None))


def load_policy(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """The trainable policy and its tokenizer (:func:`mrpo.models.policy.load_policy`)."""
    cache, device = model_cache_dir(cfg.paths.cache_dir), policy_device(cfg.trainer)
    return mrpo.models.policy.load_policy(cfg.model, cache_dir=cache, device=device)


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
        ev = cfg.eval
        callbacks.append(
            EvalCallback(
                ev.tasks,
                every_n_steps=ev.every_n_steps,
                limit=ev.limit,
                final_limit=ev.final_limit,
                batch_size=ev.batch_size,
                max_new_tokens=ev.max_new_tokens,
                draft_tokens=ev.draft_tokens,
                log_samples=ev.log_samples,
                data_dir=cfg.paths.data_dir,
                output_dir=output_dir,
                data=eval_data,
                harness=ev.harness,
            )
        )
    strategy = objective.weighting
    if strategy.needs_feedback:
        size = int(getattr(strategy, "feedback_size"))  # noqa: B009  # declared with the flag
        callbacks.append(
            ThompsonFeedback(feedback_batches(data, tokenizer, size, cfg.data.eval_batch_size))
        )
    # Any other Lightning callback, lightning-hydra-template style:
    # +callbacks.extra.early_stop._target_=lightning.pytorch.callbacks.EarlyStopping ...
    return [*callbacks, *build_extra_callbacks(cfg.callbacks)]


def throughput_summary(callbacks: list[Callback]) -> dict[str, float]:
    """The run's throughput totals (:class:`~mrpo.callbacks.ThroughputMonitor`), or {}."""
    for callback in callbacks:
        if isinstance(callback, ThroughputMonitor):
            return callback.totals.summary()
    return {}


def feedback_batches(
    data: PreparedData, tokenizer: PreTrainedTokenizerBase, size: int, batch_size: int
) -> list[PreferenceBatch]:
    """The fixed validation subsample a feedback weighting is rewarded on (the first pairs)."""
    pairs = data.val_pairs[:size]
    collate = PreferenceCollator(tokenizer.pad_token_id)
    return [collate(pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]


def logger_labels(cfg: TrainConfig) -> dict[str, Any]:
    """The W&B run's name, group and tags: the multirun's group, and tags for the swept values.

    Returns keyword arguments of :func:`mrpo.tracking.wandb.make_loggers`.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    group, name = None, None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = Path(hc.sweep.dir).name
            name = hc.job.override_dirname or f"job{hc.job.num}"
    tags = [
        f"loss:{cfg.loss.name}",
        f"num_refs:{num_references(cfg)}",
        f"weights:{cfg.weights.strategy}",
        f"seed:{cfg.seed}",
    ]
    return {"name": name, "group": group, "tags": tags}
