"""Config checks that run before any data or model is loaded.

Composition already rejects unknown keys and wrong types (the typed schema in
:mod:`mrpo.config`); these checks catch values that are well-typed but unusable, and name
the config key in the message.
"""

from __future__ import annotations

import inspect
import re

import lightning as L

from mrpo.config import TrainConfig
from mrpo.errors import ConfigError

__all__ = ["ConfigError", "check_train_config", "num_references"]


_REF_MODES = ("cached", "live")
_STAGES = ("train", "cache")
_WANDB_MODES = ("auto", "online", "offline", "disabled")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def num_references(cfg: TrainConfig) -> int:
    """K, the number of references the run uses (the first ``num_refs`` of the pool)."""
    pool = len(cfg.references.pool)
    return pool if cfg.references.num_refs is None else cfg.references.num_refs


def check_train_config(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first unusable value in ``cfg``."""
    from mrpo.evals import EVAL_NAMES

    _require(cfg.stage in _STAGES, "stage", f"must be one of {_STAGES}, got {cfg.stage!r}")
    _check_references(cfg)
    _check_objective(cfg)
    _check_data(cfg)
    for task in cfg.eval.tasks:
        _require(task in EVAL_NAMES, "eval.tasks", f"unknown task {task!r}; one of {EVAL_NAMES}")
    _require(cfg.logger.mode in _WANDB_MODES, "logger.mode", f"must be one of {_WANDB_MODES}")
    chunk = cfg.model.logprob_chunk_size
    _require(chunk is None or chunk >= 1, "model.logprob_chunk_size", "must be >= 1 or null")
    _require(cfg.model.lm_head_chunk_tokens >= 1, "model.lm_head_chunk_tokens", "must be >= 1")
    _check_trainer_kwargs(cfg.trainer)
    _check_callback_targets(cfg.callbacks)


def _check_callback_targets(callbacks: dict) -> None:
    """Every ``callbacks.<name>._target_`` must name an importable Lightning callback class."""
    from hydra.utils import get_class
    from lightning.pytorch.callbacks import Callback

    for name, spec in callbacks.items():
        if not (isinstance(spec, dict) and "_target_" in spec):
            continue
        key = f"callbacks.{name}._target_"
        try:
            target = get_class(spec["_target_"])
        except Exception as err:  # not importable, or not a class
            raise ConfigError(f"{key}: cannot import {spec['_target_']!r} ({err})") from None
        _require(
            issubclass(target, Callback), key, f"{target.__name__} is not a Lightning Callback"
        )


_OPTION_KEYS = {
    "beta": "loss.beta",
    "loss_type": "loss.loss_type",
    "label_smoothing": "loss.label_smoothing",
    "ctro": "loss.ctro",
    "epsilon": "loss.epsilon",
    "adaptive_epsilon": "loss.adaptive_epsilon",
    "harmonic_pairing": "loss.harmonic_pairing",
    "weighting": "weights.strategy",
    "fixed_weights": "weights.values",
    "window": "weights.window",
    "prior": "weights.prior",
    "seed": "weights.seed",
}


def _check_objective(cfg: TrainConfig) -> None:
    """Build the objective (cheap, pure) and translate its errors into config keys."""
    from mrpo.objectives import available_objectives
    from mrpo.pipeline import build_objective

    names = available_objectives()
    _require(
        cfg.loss.name in names, "loss.name", f"unknown objective {cfg.loss.name!r}; one of {names}"
    )
    if cfg.weights.strategy == "fixed":
        _require(
            cfg.weights.values is not None, "weights.values", "the fixed strategy needs a list"
        )
    try:
        build_objective(cfg)
    except ValueError as err:
        message = str(err)
        match = re.search(r"option\(?s?\)? \[?'(\w+)'", message)
        key = _OPTION_KEYS.get(match.group(1), "loss") if match else "loss"
        if "K=" in message and key == "loss":
            key = "references.num_refs"
        raise ConfigError(f"{key}: {message}") from None


def _check_references(cfg: TrainConfig) -> None:
    refs = cfg.references
    _require(len(refs.pool) > 0, "references.pool", "needs at least one reference")
    names = [r.name for r in refs.pool]
    _require(len(set(names)) == len(names), "references.pool", f"duplicate names in {names}")
    if refs.num_refs is not None:
        _require(
            1 <= refs.num_refs <= len(refs.pool),
            "references.num_refs",
            f"must be between 1 and the pool size {len(refs.pool)}, got {refs.num_refs}",
        )
    _require(refs.mode in _REF_MODES, "references.mode", f"must be one of {_REF_MODES}")
    _require(refs.batch_size >= 1, "references.batch_size", "must be >= 1")
    _require(refs.shard_timeout_s > 0, "references.shard_timeout_s", "must be > 0 seconds")


def _check_data(cfg: TrainConfig) -> None:
    data = cfg.data
    _require(data.max_length > 1, "data.max_length", f"must be > 1, got {data.max_length}")
    if data.max_prompt_length is not None:
        _require(
            0 < data.max_prompt_length < data.max_length,
            "data.max_prompt_length",
            f"must be in (0, data.max_length={data.max_length}), got {data.max_prompt_length}",
        )
    _require(data.batch_size >= 1, "data.batch_size", "must be >= 1")
    _require(data.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")
    _require(
        data.val_size > 0,
        "data.val_size",
        "must be > 0 (a fraction below 1 or a number of pairs)",
    )
    if data.max_samples is not None:
        _require(data.max_samples >= 2, "data.max_samples", "must be >= 2 (train and val)")


def _check_trainer_kwargs(trainer: dict) -> None:
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        _require(key in accepted, f"trainer.{key}", "is not a lightning.Trainer argument")
    _require(
        "use_distributed_sampler" not in trainer,
        "trainer.use_distributed_sampler",
        "is always False in mrpo (its batch samplers split batches across ranks); remove it",
    )
