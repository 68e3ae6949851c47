"""The config checks of ``mrpo-train`` and ``mrpo-eval``, in order, before any data or model
is loaded.

Composition already rejects unknown keys and wrong types (the typed schema in
:mod:`mrpo.config.schema`). Every value is then checked against its declared domain
(:mod:`mrpo.domains`), each group's settings against themselves (the library's settings
classes raise :class:`~mrpo.errors.OptionError`, named here with the group's key), the
groups against each other, and last what the machine offers. Each refusal is a
:class:`~mrpo.errors.ConfigError` naming the key; nothing here parses error messages.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import torch

from mrpo.config.schema import EvalRunConfig, TrainConfig
from mrpo.domains import check_settings
from mrpo.errors import ConfigError, option_prefix, renamed
from mrpo.evals.registry import EVAL_NAMES
from mrpo.groups.moving import check_moving_references
from mrpo.groups.objective import build_objective
from mrpo.groups.references import reference_specs, selected_references
from mrpo.groups.trainer import check_trainer_relations
from mrpo.models import ModelSourceError, resolve_source
from mrpo.models.checkpoint import CheckpointError, checkpoint_kind
from mrpo.models.parallel import wants_cuda
from mrpo.models.quantization import check_runs
from mrpo.tracking.backends import check_logger_packages

__all__ = ["check_domains", "check_eval_run_config", "check_train_config"]


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
    within its domain, each group, the groups together, then the machine."""
    check_domains(cfg)
    with option_prefix("references"):
        cfg.references.check()
    reference_specs(cfg)
    build_objective(cfg)
    with option_prefix("eval"):
        cfg.eval.check(cfg.paths.data_dir)
    check_logger_packages(cfg.logger)  # logger=mlflow / tensorboard: their packages installed
    with option_prefix("trainer"):
        cfg.trainer.check_extra()
    with option_prefix("model"):
        cfg.model.check()
    check_moving_references(cfg)  # before the machine's: a combination refused anywhere
    with option_prefix("trainer"):
        sharding = cfg.trainer.check_machine()
    check_trainer_relations(cfg, sharding)
    with option_prefix("model"):
        cfg.model.check_machine(torch.device("cuda" if wants_cuda(cfg.trainer.kwargs()) else "cpu"))
    # References run on this rank's GPU when there is one (mrpo.references.ReferenceEnsemble).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for i, spec in selected_references(cfg):
        if spec.quantization is not None:
            with option_prefix(f"references.pool.{i}"), renamed("quantization"):
                check_runs(spec.quantization, device)


def check_eval_run_config(cfg: EvalRunConfig) -> None:
    """Raise :class:`ConfigError` naming the first unusable value of an ``mrpo-eval`` config:
    its options, the checkpoint's kind and the model sources it loads (file system only)."""
    check_domains(cfg)
    if not cfg.eval.tasks:
        raise ConfigError("eval.tasks", f"is empty; name {', '.join(EVAL_NAMES)} or lm-eval tasks")
    with option_prefix("eval"):
        cfg.eval.check(cfg.paths.data_dir)
    check_logger_packages(cfg.logger)
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
