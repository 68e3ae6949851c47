"""Config checks that run before any data or model is loaded.

Composition already rejects unknown keys and wrong types (the typed schema in
:mod:`mrpo.config.schema`); these checks catch values that are well-typed but unusable, and
raise :class:`~mrpo.errors.ConfigError` naming the config key. The key is known where the
check is made: here for plain ranges, or through :mod:`mrpo.config.build`, which turns the
library's :class:`~mrpo.errors.OptionError` (it carries the option's name) into the key the
option was built from. Nothing here parses error messages.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import lightning as L

from mrpo.config.build import build_objective, option_prefix, reference_specs
from mrpo.config.moving import check_moving_references
from mrpo.config.requirements import check_requirements
from mrpo.config.schema import EvalConfig, EvalRunConfig, ModelConfig, TrainConfig
from mrpo.errors import ConfigError, OptionError
from mrpo.evals.harness.preflight import check_harness_tasks
from mrpo.evals.registry import EVAL_NAMES
from mrpo.models import ATTENTION_IMPLEMENTATIONS, DTYPES, ModelSourceError, resolve_source
from mrpo.models.checkpoint import CheckpointError, checkpoint_kind
from mrpo.tracking.backends import check_logger_packages
from mrpo.tracking.wandb import WANDB_MODES

__all__ = ["check_eval_run_config", "check_train_config", "import_target", "require"]

REF_MODES = ("cached", "live")
STAGES = ("train", "cache")


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, message)


def check_train_config(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first unusable value in ``cfg``."""
    require(cfg.stage in STAGES, "stage", f"must be one of {STAGES}, got {cfg.stage!r}")
    # Lightning seeds numpy too, whose seeds are unsigned 32-bit integers.
    require(0 <= cfg.seed < 2**32, "seed", f"must be in [0, 2**32), got {cfg.seed}")
    _check_references(cfg)
    build_objective(cfg)
    _check_data(cfg)
    _check_eval(cfg.eval, cfg.paths.data_dir)
    require(cfg.logger.mode in WANDB_MODES, "logger.mode", f"must be one of {WANDB_MODES}")
    check_logger_packages(cfg.logger)  # logger=mlflow / tensorboard: their packages installed
    _check_model(cfg.model)
    _check_trainer_kwargs(cfg.trainer)
    _check_callback_targets(cfg.callbacks)
    check_moving_references(cfg)  # before the machine's: a combination refused anywhere
    check_requirements(cfg)  # the machine (bitsandbytes, CUDA, deepspeed) and combinations


def check_eval_run_config(cfg: EvalRunConfig) -> None:
    """Raise :class:`ConfigError` naming the first unusable value of an ``mrpo-eval`` config:
    its options, the checkpoint's kind and the model sources it loads (file system only)."""
    ev = cfg.eval
    require(
        bool(ev.tasks), "eval.tasks", f"is empty; name {', '.join(EVAL_NAMES)} or lm-eval tasks"
    )
    _check_eval(ev, cfg.paths.data_dir)
    require(
        cfg.logger.mode in WANDB_MODES,
        "logger.mode",
        f"must be one of {WANDB_MODES}, got {cfg.logger.mode!r}",
    )
    check_logger_packages(cfg.logger)
    _check_model(cfg.model)
    kind = None
    if cfg.checkpoint is not None:
        try:
            kind = checkpoint_kind(cfg.checkpoint)
        except CheckpointError as err:
            raise ConfigError("checkpoint", str(err)) from None
    # A model directory brings its own weights and tokenizer; otherwise model.source is loaded.
    sources = [("model.tokenizer", cfg.model.tokenizer)]
    if kind != "model_dir":
        sources.append(("model.source", cfg.model.source))
    for key, source in sources:
        if source is None:
            continue
        try:
            resolve_source(source)
        except ModelSourceError as err:
            raise ConfigError(key, str(err)) from None


def _check_model(model: ModelConfig) -> None:
    require(model.dtype in DTYPES, "model.dtype", f"unknown {model.dtype!r}; one of {list(DTYPES)}")
    chunk = model.logprob_chunk_size
    require(chunk is None or chunk >= 1, "model.logprob_chunk_size", "must be >= 1 or null")
    require(model.lm_head_chunk_tokens >= 1, "model.lm_head_chunk_tokens", "must be >= 1")
    require(
        model.attn_implementation in (None, *ATTENTION_IMPLEMENTATIONS),
        "model.attn_implementation",
        f"unknown {model.attn_implementation!r}; one of {list(ATTENTION_IMPLEMENTATIONS)} or null",
    )
    if model.lora.enabled:
        try:
            model.lora.check()
        except OptionError as err:
            raise ConfigError(f"model.lora.{err.option}", str(err)) from None


def _check_eval(ev: EvalConfig, data_dir: str | None) -> None:
    """Sizes, and every task name: built in, or an lm-eval task whose data is at hand."""
    require(
        ev.limit is None or ev.limit >= 1,
        "eval.limit",
        f"must be a positive number of questions or null, got {ev.limit}",
    )
    require(
        ev.final_limit is None or ev.final_limit >= 0,
        "eval.final_limit",
        f"must be a number of questions (0: no final evaluation) or null, got {ev.final_limit}",
    )
    require(ev.every_n_steps >= 0, "eval.every_n_steps", f"must be >= 0, got {ev.every_n_steps}")
    for key in ("batch_size", "max_new_tokens"):
        require(getattr(ev, key) >= 1, f"eval.{key}", f"must be >= 1, got {getattr(ev, key)}")
    require(ev.draft_tokens >= 0, "eval.draft_tokens", f"must be >= 0, got {ev.draft_tokens}")
    # Names the registry does not know are lm-eval's: checked against its index and for data.
    harness_tasks = [t for t in ev.tasks if t not in EVAL_NAMES]
    for name, shots in ev.harness.num_fewshot.items():
        key = f"eval.harness.num_fewshot.{name}"
        require(name in harness_tasks, key, "names no lm-eval task of eval.tasks")
        require(shots >= 0, key, f"must be >= 0, got {shots}")
    try:
        check_harness_tasks(harness_tasks, ev.harness, data_dir=data_dir)
    except OptionError as err:
        raise ConfigError(f"eval.{err.option}", str(err)) from None


def _check_references(cfg: TrainConfig) -> None:
    refs = cfg.references
    require(len(refs.pool) > 0, "references.pool", "needs at least one reference")
    names = [r.name for r in refs.pool]
    require(len(set(names)) == len(names), "references.pool", f"duplicate names in {names}")
    if refs.num_refs is not None:
        require(
            1 <= refs.num_refs <= len(refs.pool),
            "references.num_refs",
            f"must be between 1 and the pool size {len(refs.pool)}, got {refs.num_refs}",
        )
    require(refs.mode in REF_MODES, "references.mode", f"must be one of {REF_MODES}")
    require(refs.batch_size >= 1, "references.batch_size", "must be >= 1")
    require(refs.shard_timeout_s > 0, "references.shard_timeout_s", "must be > 0 seconds")
    require(
        refs.lock_timeout_s is None or refs.lock_timeout_s > 0,
        "references.lock_timeout_s",
        "must be > 0 seconds, or null to wait as long as it takes",
    )
    reference_specs(cfg)


def _check_data(cfg: TrainConfig) -> None:
    from mrpo.data.formats import FORMATS

    data = cfg.data
    require(data.max_length > 1, "data.max_length", f"must be > 1, got {data.max_length}")
    if data.max_prompt_length is not None:
        require(
            0 < data.max_prompt_length < data.max_length,
            "data.max_prompt_length",
            f"must be in (0, data.max_length={data.max_length}), got {data.max_prompt_length}",
        )
    require(data.batch_size >= 1, "data.batch_size", "must be >= 1")
    for key in ("pack_row_tokens", "max_tokens_per_batch", "num_proc"):
        value = getattr(data, key)
        require(value is None or value >= 1, f"data.{key}", f"must be >= 1 or null, got {value}")
    require(data.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")
    require(
        data.val_size > 0,
        "data.val_size",
        "must be > 0 (a fraction below 1 or a number of pairs)",
    )
    if data.max_samples is not None:
        require(data.max_samples >= 2, "data.max_samples", "must be >= 2 (train and val)")
    require(data.test_size >= 0, "data.test_size", "must be >= 0 (0: no test split)")
    require(
        data.train_size is None or data.train_size > 0,
        "data.train_size",
        "must be > 0 (a fraction below 1 or a number of pairs) or null (the rest)",
    )
    with option_prefix("data.length_filter"):
        data.length_filter.check()
    require(
        data.format is None or data.format in FORMATS,
        "data.format",
        f"unknown format {data.format!r}; one of {list(FORMATS)} or null (detected)",
    )


def _check_trainer_kwargs(trainer: Mapping[str, Any]) -> None:
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        require(key in accepted, f"trainer.{key}", "is not a lightning.Trainer argument")
    require(
        "use_distributed_sampler" not in trainer,
        "trainer.use_distributed_sampler",
        "is always False in mrpo (its batch samplers split batches across ranks); remove it",
    )


def import_target(path: str, key: str) -> Any:
    """The object a ``_target_`` names (``package.module.Name``), imported.

    Raises:
        ConfigError: for ``key``, when the module or the name cannot be found.
    """
    module_name, _, name = str(path).rpartition(".")
    try:
        if not module_name:
            raise ImportError(f"{path!r} names no module")
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(key, f"cannot import {path!r} ({type(err).__name__}: {err})") from None
    return target


def _check_callback_targets(callbacks: Mapping[str, Any]) -> None:
    """Every ``callbacks.<name>._target_`` must name an importable Lightning callback class."""
    from lightning.pytorch.callbacks import Callback

    for name, spec in callbacks.items():
        if not (isinstance(spec, Mapping) and "_target_" in spec):
            continue
        key = f"callbacks.{name}._target_"
        target = import_target(spec["_target_"], key)
        require(
            isinstance(target, type) and issubclass(target, Callback),
            key,
            f"{spec['_target_']} is not a Lightning Callback class",
        )
