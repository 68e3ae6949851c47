"""Steps of a training run, each from the typed config to plain objects.

:mod:`mrpo.cli.train` calls these in order. They take the typed
:class:`~mrpo.config.TrainConfig` dataclasses (never OmegaConf objects) and hand plain
arguments to the library modules; the cheap objects every check also builds (the objective, the
reference specs) come from :mod:`mrpo.config.build`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from transformers import PreTrainedTokenizerBase

from mrpo.callbacks import EvalCallback, ThompsonFeedback
from mrpo.config.build import num_references, reference_specs
from mrpo.config.schema import TrainConfig
from mrpo.data.collate import PreferenceCollator
from mrpo.data.preference import load_preference_data, train_val_split
from mrpo.data.tokenize import tokenize_pairs
from mrpo.data.types import PreferenceBatch, PreferenceExample, TokenizedPair
from mrpo.errors import ConfigError
from mrpo.models import compile_policy, enable_gradient_checkpointing, load_model, load_tokenizer
from mrpo.objectives import Objective
from mrpo.references import LiveReferences, ReferenceEnsemble, RefTable
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


def model_cache_dir(cache_dir: str | Path) -> Path:
    """Where converted models (the packaged GGUF) are cached, under ``paths.cache_dir``."""
    return Path(cache_dir) / "models"


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
        format=d.format,
    )
    if loaded.dropped.num_dropped:
        log.warning("%s", loaded.dropped.summary())
    # val_size below 1 is a fraction of the pairs, from 1 up a number of pairs.
    split = {"val_fraction": d.val_size} if d.val_size < 1 else {"val_size": int(d.val_size)}
    train_ex, val_ex = train_val_split(loaded.examples, seed=d.split_seed, **split)
    tokenizer = load_tokenizer(
        cfg.model.tokenizer or cfg.model.source,
        chat_template=cfg.model.chat_template,
        cache_dir=model_cache_dir(cfg.paths.cache_dir),
    )
    train_tok, val_tok = (
        tokenize_pairs(
            ex, tokenizer, max_length=d.max_length, max_prompt_length=d.max_prompt_length
        )
        for ex in (train_ex, val_ex)
    )
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
    """The first K references of the pool, with their cache and ranks."""
    return ReferenceEnsemble(
        reference_specs(cfg),
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
    refs: PreparedReferences, policy: torch.nn.Module, data: PreparedData
) -> LiveReferences | None:
    """A per-batch reference scorer in live mode (None in cached mode)."""
    if refs.table is not None:
        return None
    return LiveReferences(
        refs.ensemble, policy=policy, examples=data.train_examples + data.val_examples
    )


def fit_offline_weights(objective: Objective, refs: PreparedReferences, data: PreparedData) -> None:
    """Fit validation-based weightings (vdw, vaw) on the references' validation log-probs."""
    strategy = objective.weighting
    if not strategy.fits_on_validation:
        return
    val = refs.ensemble.precompute(data.val_examples, progress=False).logps
    index = torch.tensor([ex.index for ex in data.val_examples])
    rows = [ref.select(index) for ref in val]
    strategy.fit(  # type: ignore[attr-defined]  # declared by fits_on_validation
        torch.stack([r.chosen for r in rows]),
        torch.stack([r.rejected for r in rows]),
        torch.stack([r.chosen_tokens for r in rows]),
        torch.stack([r.rejected_tokens for r in rows]),
    )
    log.info("fitted %s weights: %s", strategy.name, getattr(strategy, "fitted", None))


def load_policy(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """The trainable policy and its tokenizer."""
    m = cfg.model
    cache = model_cache_dir(cfg.paths.cache_dir)
    tokenizer = load_tokenizer(
        m.tokenizer or m.source, chat_template=m.chat_template, cache_dir=cache
    )
    policy = load_model(m.source, dtype=m.dtype, cache_dir=cache, lora=m.lora, trainable=True)
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if m.compile:
        compile_policy(policy)
    policy.train()  # from_pretrained returns eval mode; dropout is already zeroed
    return policy, tokenizer


def build_callbacks(
    cfg: TrainConfig,
    output_dir: Path,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    objective: Objective,
) -> list[Callback]:
    """Checkpointing, learning-rate monitor, evaluation, the weighting's feedback loop, and
    any other callback the config names by ``_target_``."""
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
    # +callbacks.early_stop._target_=lightning.pytorch.callbacks.EarlyStopping ...
    for name, spec in cfg.callbacks.items():
        if isinstance(spec, Mapping) and "_target_" in spec:
            callbacks.append(instantiate_callback(name, spec))
    return callbacks


def checkpoint_callbacks(ckpt: Mapping[str, Any], dirpath: Path) -> list[Callback]:
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


def instantiate_callback(name: str, spec: Mapping[str, Any]) -> Callback:
    """Instantiate ``callbacks.<name>`` (its class was checked by the config checks)."""
    import hydra

    try:
        return hydra.utils.instantiate(dict(spec))
    except Exception as err:  # bad arguments
        raise ConfigError(
            f"callbacks.{name}", f"cannot instantiate {spec['_target_']}: {err}"
        ) from None


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
        f"weights:{cfg.weights.get('strategy')}",
        f"seed:{cfg.seed}",
    ]
    return {"name": name, "group": group, "tags": tags}
