"""Config checks that run before any data or model is loaded.

Composition already rejects unknown keys and wrong types (the typed schema in
:mod:`mrpo.config.schema`); these checks catch values that are well-typed but unusable, and
raise :class:`~mrpo.errors.ConfigError` naming the config key. The key is known where the
check is made: here for relations, or through the groups' builders (:mod:`mrpo.groups`),
which turn the library's :class:`~mrpo.errors.OptionError` (it carries the option's name) into
the key the option was built from. Nothing here parses error messages.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from mrpo.config.moving import check_moving_references
from mrpo.config.requirements import check_requirements
from mrpo.config.schema import EvalConfig, EvalRunConfig, ModelConfig, TrainConfig
from mrpo.domains import check_settings
from mrpo.errors import ConfigError, OptionError, option_prefix
from mrpo.evals.harness.preflight import check_harness_tasks
from mrpo.evals.registry import EVAL_NAMES
from mrpo.groups.objective import build_objective
from mrpo.groups.references import reference_specs
from mrpo.models import ModelSourceError, resolve_source
from mrpo.models.checkpoint import CheckpointError, checkpoint_kind
from mrpo.tracking.backends import check_logger_packages

__all__ = ["check_domains", "check_eval_run_config", "check_train_config", "require"]


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, message)


def check_domains(settings: TrainConfig | EvalRunConfig) -> None:
    """Raise :class:`ConfigError` for the first value outside its field's declared domain
    (:mod:`mrpo.domains`): every key of the schema, generated from the declarations."""
    # Values other keys interpolate (paths.data_dir, seed) first: a bad one is named where
    # it was set, not where it was copied to.
    first = [f.name for f in fields(settings) if not is_dataclass(getattr(settings, f.name))]
    for key, problem in check_settings(settings, "", first=[*first, "paths"]):
        raise ConfigError(key, problem)


def check_train_config(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first unusable value in ``cfg``: each value
    within its domain, then the relations between keys and groups."""
    check_domains(cfg)
    _check_references(cfg)
    build_objective(cfg)
    _check_eval(cfg.eval, cfg.paths.data_dir)
    check_logger_packages(cfg.logger)  # logger=mlflow / tensorboard: their packages installed
    _check_model(cfg.model)
    with option_prefix("trainer"):
        cfg.trainer.check_extra()
    check_moving_references(cfg)  # before the machine's: a combination refused anywhere
    check_requirements(cfg)  # the machine (bitsandbytes, CUDA, deepspeed) and combinations


def check_eval_run_config(cfg: EvalRunConfig) -> None:
    """Raise :class:`ConfigError` naming the first unusable value of an ``mrpo-eval`` config:
    its options, the checkpoint's kind and the model sources it loads (file system only)."""
    check_domains(cfg)
    ev = cfg.eval
    require(
        bool(ev.tasks), "eval.tasks", f"is empty; name {', '.join(EVAL_NAMES)} or lm-eval tasks"
    )
    _check_eval(ev, cfg.paths.data_dir)
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
    if model.lora.enabled:
        with option_prefix("model.lora"):
            model.lora.check()


def _check_eval(ev: EvalConfig, data_dir: str | None) -> None:
    """Every task name: built in, or an lm-eval task whose data is at hand."""
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
    names = [r.name for r in refs.pool]
    require(len(set(names)) == len(names), "references.pool", f"duplicate names in {names}")
    if refs.num_refs is not None:
        require(
            1 <= refs.num_refs <= len(refs.pool),
            "references.num_refs",
            f"must be between 1 and the pool size {len(refs.pool)}, got {refs.num_refs}",
        )
    reference_specs(cfg)
