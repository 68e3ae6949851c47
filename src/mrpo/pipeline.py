"""Steps of a training run, each from the typed config to plain objects.

:mod:`mrpo.train` calls these in order. They take the typed :class:`~mrpo.config.TrainConfig`
dataclasses (never OmegaConf objects) and hand plain arguments to the library modules.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint

from mrpo.callbacks import EvalCallback, ThompsonFeedback
from mrpo.checks import ConfigError, num_references
from mrpo.config import TrainConfig
from mrpo.data.collate import PreferenceCollator
from mrpo.data.preference import load_preference_data, train_val_split
from mrpo.data.tokenize import tokenize_pairs
from mrpo.data.types import PreferenceBatch, PreferenceExample, TokenizedPair
from mrpo.models import (
    LoraSettings,
    compile_policy,
    enable_gradient_checkpointing,
    load_model,
    load_tokenizer,
)
from mrpo.objectives import Objective, get_objective, get_objective_spec
from mrpo.references import LiveReferences, ReferenceEnsemble, ReferenceSpec, RefTable
from mrpo.references.scoring import data_fingerprint
from mrpo.references.sharding import detect_ranks

log = logging.getLogger("mrpo.train")


@dataclass
class PreparedData:
    """Validated, split and tokenized preference data (policy tokenizer)."""

    train_examples: list[PreferenceExample]
    val_examples: list[PreferenceExample]
    train_pairs: list[TokenizedPair]
    val_pairs: list[TokenizedPair]
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedReferences:
    """The reference ensemble and, in cached mode, its log-prob table over every row."""

    ensemble: ReferenceEnsemble
    table: RefTable | None
    stats: dict[str, Any] = field(default_factory=dict)


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load, validate, split and tokenize the preference data (no model is loaded)."""
    d = cfg.data
    loaded = load_preference_data(
        d.source,
        split=d.split,
        subset=d.subset,
        data_dir=d.data_dir or cfg.paths.data_dir,
        drop_invalid=d.drop_invalid,
        limit=d.max_samples,
    )
    if loaded.dropped.num_dropped:
        log.warning("%s", loaded.dropped.summary())
    # val_size below 1 is a fraction of the pairs, from 1 up a number of pairs.
    split = {"val_fraction": d.val_size} if d.val_size < 1 else {"val_size": int(d.val_size)}
    train_ex, val_ex = train_val_split(loaded.examples, seed=d.split_seed, **split)
    tokenizer = load_tokenizer(
        cfg.model.tokenizer or cfg.model.source,
        chat_template=cfg.model.chat_template,
        cache_dir=model_cache_dir(cfg),
    )
    kw = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length)
    train_tok = tokenize_pairs(train_ex, tokenizer, **kw)
    val_tok = tokenize_pairs(val_ex, tokenizer, **kw)
    report = {
        "source": loaded.source,
        "rows": len(loaded.examples),
        "dropped": loaded.dropped.num_dropped,
        "train_pairs": len(train_tok.pairs),
        "val_pairs": len(val_tok.pairs),
        "truncated": train_tok.num_truncated + val_tok.num_truncated,
        # What the policy saw, exactly (token ids): equal fingerprints, equal data.
        "train_fingerprint": data_fingerprint(train_tok.pairs),
        "val_fingerprint": data_fingerprint(val_tok.pairs),
    }
    log.info("data: %s", report)
    return PreparedData(train_ex, val_ex, list(train_tok.pairs), list(val_tok.pairs), report)


def build_ensemble(cfg: TrainConfig) -> ReferenceEnsemble:
    """The first K references of the pool; ``loss.length_normalize`` applies to all of them."""
    specs = [
        ReferenceSpec(
            **{**asdict(ref), "length_normalize": ref.length_normalize or cfg.loss.length_normalize}
        )
        for ref in cfg.references.pool[: num_references(cfg)]
    ]
    return ReferenceEnsemble(
        specs,
        policy_source=cfg.model.source,
        policy_tokenizer=cfg.model.tokenizer,
        policy_chat_template=cfg.model.chat_template,
        max_length=cfg.data.max_length,
        max_prompt_length=cfg.data.max_prompt_length,
        cache_dir=Path(cfg.paths.cache_dir) / "reflogps",
        batch_size=cfg.references.batch_size,
        model_cache_dir=model_cache_dir(cfg),
        ranks=detect_ranks() if cfg.references.split_across_ranks else None,
        shard_timeout=cfg.references.shard_timeout_s,
    )


def prepare_references(cfg: TrainConfig, data: PreparedData) -> PreparedReferences:
    """Fill (or reuse) the reference log-prob cache for every row the run needs.

    In cached mode every reference scores the train and validation rows once, one model in
    memory at a time, and later runs with the same references and rows read the cache. In
    live mode only the validation rows are cached (offline weightings fit on them) and the
    references score training batches as they come.
    """
    ensemble = build_ensemble(cfg)
    rows = data.train_examples + data.val_examples
    if cfg.references.mode == "live":
        pre = ensemble.precompute(data.val_examples)
        return PreparedReferences(ensemble, None, asdict(pre.stats))
    table = ensemble.table(rows)
    return PreparedReferences(ensemble, table, asdict(ensemble.stats))


def live_references(
    refs: PreparedReferences, policy: Any, data: PreparedData
) -> LiveReferences | None:
    """A per-batch reference scorer in live mode (None in cached mode)."""
    if refs.table is not None:
        return None
    return LiveReferences(
        refs.ensemble, policy=policy, examples=data.train_examples + data.val_examples
    )


def fit_offline_weights(objective: Objective, refs: PreparedReferences, data: PreparedData) -> None:
    """Fit validation-based weightings (vdw, vaw) on the references' validation log-probs."""
    if not hasattr(objective.weighting, "fit"):
        return
    val = refs.ensemble.precompute(data.val_examples, progress=False).logps
    index = torch.tensor([ex.index for ex in data.val_examples])
    rows = [ref.select(index) for ref in val]
    objective.weighting.fit(
        torch.stack([r.chosen for r in rows]),
        torch.stack([r.rejected for r in rows]),
        torch.stack([r.chosen_tokens for r in rows]),
        torch.stack([r.rejected_tokens for r in rows]),
    )
    log.info("fitted %s weights: %s", objective.weighting.name, objective.weighting.fitted)


def model_cache_dir(cfg: TrainConfig) -> Path:
    """Where converted models (the packaged GGUF) are cached."""
    return Path(cfg.paths.cache_dir) / "models"


def lora_settings(cfg: TrainConfig) -> LoraSettings | None:
    lora = cfg.model.lora
    if not lora.enabled:
        return None
    return LoraSettings(
        r=lora.r,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=tuple(lora.target_modules),
    )


def load_policy(cfg: TrainConfig) -> tuple[Any, Any]:
    """The trainable policy and its tokenizer."""
    m = cfg.model
    tokenizer = load_tokenizer(
        m.tokenizer or m.source, chat_template=m.chat_template, cache_dir=model_cache_dir(cfg)
    )
    policy = load_model(
        m.source,
        dtype=m.dtype,
        cache_dir=model_cache_dir(cfg),
        lora=lora_settings(cfg),
        trainable=True,
    )
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if m.compile:
        compile_policy(policy)
    policy.train()  # from_pretrained returns eval mode; dropout is already zeroed
    return policy, tokenizer


def objective_options(cfg: TrainConfig) -> dict[str, Any]:
    """The objective's keyword options from the ``loss`` and ``weights`` groups.

    Only the options the chosen objective accepts are passed (DPO takes no weighting), and
    ``None`` means "the objective's own default".
    """
    loss, weights = cfg.loss, cfg.weights
    candidates = {
        "loss_type": loss.loss_type,
        "label_smoothing": loss.label_smoothing,
        "ctro": loss.ctro,
        "epsilon": loss.epsilon,
        "adaptive_epsilon": loss.adaptive_epsilon,
        "harmonic_pairing": loss.harmonic_pairing,
        "weighting": weights.strategy,
    }
    strategy_params = {
        "fixed": {"fixed_weights": weights.values},
        "sliding_window": {"window": weights.window},
        "thompson": {"prior": tuple(weights.prior), "seed": weights.seed},
    }
    candidates.update(strategy_params.get(weights.strategy, {}))
    accepted = get_objective_spec(loss.name).options
    return {k: v for k, v in candidates.items() if k in accepted and v is not None}


def build_objective(cfg: TrainConfig) -> Objective:
    """The configured objective, checked against the number of references."""
    return get_objective(
        cfg.loss.name, beta=cfg.loss.beta, num_refs=num_references(cfg), **objective_options(cfg)
    )


def build_callbacks(
    cfg: TrainConfig, output_dir: Path, data: PreparedData, tokenizer: Any
) -> list[Callback]:
    """Checkpointing, learning-rate monitor, non-finite-loss guard and evaluation."""
    callbacks: list[Callback] = []
    ckpt = cfg.callbacks.get("checkpoint")
    if ckpt:
        callbacks.extend(checkpoint_callbacks(ckpt, output_dir / "checkpoints"))
    if cfg.callbacks.get("lr_monitor"):
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
                log_samples=ev.log_samples,
                data_dir=cfg.paths.data_dir,
                output_dir=output_dir,
            )
        )
    if cfg.loss.name != "dpo" and cfg.weights.strategy == "thompson":
        callbacks.append(ThompsonFeedback(feedback_batches(cfg, data, tokenizer)))
    # Any other Lightning callback, lightning-hydra-template style:
    # +callbacks.early_stop._target_=lightning.pytorch.callbacks.EarlyStopping ...
    for name, spec in cfg.callbacks.items():
        if isinstance(spec, dict) and "_target_" in spec:
            callbacks.append(instantiate_callback(name, spec))
    return callbacks


def checkpoint_callbacks(ckpt: dict[str, Any], dirpath: Path) -> list[Callback]:
    """``last.ckpt`` (resumable, periodic) and the best checkpoints by the monitored metric.

    Two callbacks, because a single monitoring ``ModelCheckpoint`` defers every save until the
    monitored validation metric exists: a run killed in its first epoch would have no
    checkpoint at all. ``last.ckpt`` is written every ``every_n_train_steps`` steps (if set)
    and at the end of every epoch, whatever the metrics; ``best-step=<n>.ckpt`` files keep
    the ``save_top_k`` best validations.
    """
    callbacks: list[Callback] = []
    if ckpt.get("save_last", True):
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(dirpath),
                save_top_k=0,
                save_last=True,
                every_n_train_steps=ckpt.get("every_n_train_steps"),
            )
        )
    if ckpt.get("save_top_k", 1) != 0 and ckpt.get("monitor"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(dirpath),
                monitor=ckpt["monitor"],
                mode=ckpt.get("mode", "max"),
                save_top_k=ckpt.get("save_top_k", 1),
                save_last=False,
                filename="best-{step}",
            )
        )
    return callbacks


def instantiate_callback(name: str, spec: dict[str, Any]) -> Callback:
    """Instantiate ``callbacks.<name>`` (its class was checked by ``check_train_config``)."""
    import hydra

    try:
        return hydra.utils.instantiate(spec)
    except Exception as err:  # bad arguments
        raise ConfigError(
            f"callbacks.{name}: cannot instantiate {spec['_target_']}: {err}"
        ) from None


def feedback_batches(cfg: TrainConfig, data: PreparedData, tokenizer: Any) -> list[PreferenceBatch]:
    """The fixed validation subsample the Thompson bandit is rewarded on (first pairs)."""
    pairs = data.val_pairs[: cfg.weights.feedback_size]
    collate = PreferenceCollator(tokenizer.pad_token_id)
    size = cfg.data.eval_batch_size
    return [collate(pairs[i : i + size]) for i in range(0, len(pairs), size)]


def wandb_settings(cfg: TrainConfig) -> Any:
    """W&B run settings: the multirun's group, and tags for the swept values."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mrpo.tracking import WandbSettings

    group, name = cfg.logger.group, None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = group or Path(hc.sweep.dir).name
            name = hc.job.override_dirname or f"job{hc.job.num}"
    tags = [
        f"loss:{cfg.loss.name}",
        f"num_refs:{num_references(cfg)}",
        f"weights:{cfg.weights.strategy}",
        f"seed:{cfg.seed}",
        *cfg.logger.tags,
    ]
    return WandbSettings(
        enabled=cfg.logger.wandb,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=group,
        job_type=cfg.logger.job_type,
        name=name,
        tags=tags,
        mode=cfg.logger.mode,
        init_timeout=cfg.logger.init_timeout,
    )


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
