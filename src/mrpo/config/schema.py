"""Typed configuration schema for ``mrpo-train`` and ``mrpo-eval``.

The dataclasses below are registered with Hydra's ConfigStore and named first in the primary
configs' defaults lists, so every YAML file of the config tree (``mrpo/conf``, shipped with the
package) is merged *into* a typed schema: a misspelt key or a value of the wrong type fails at
composition, before anything is loaded. ``???`` marks values a user must give. Entry points
turn the composed config into these plain dataclasses (``OmegaConf.to_object``); library code
never sees OmegaConf objects.

A group's settings are its library room's own settings class, each field with its declared
domain (:mod:`mrpo.domains`): ``model`` a :class:`~mrpo.models.policy.ModelConfig`, ``data`` a
:class:`~mrpo.data.pipeline.DataConfig`, ``references`` a
:class:`~mrpo.references.spec.ReferencesConfig`, ``loss`` a :class:`~mrpo.objectives.LossConfig`
(the objectives' ``ObjectiveConfig`` and a name), ``weights`` generated from the weighting
registry, ``optimizer``, ``scheduler`` and ``trainer`` :mod:`mrpo.training`'s, ``callbacks``
:mod:`mrpo.callbacks.settings`', ``eval`` an :class:`~mrpo.evals.EvalConfig`. Keyword arguments
mrpo does not model pass through a group's ``extra`` mapping (``trainer.extra``,
``optimizer.extra``, ``callbacks.extra``), checked against what they configure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from mrpo.callbacks.settings import CallbacksConfig
from mrpo.config.compose import check_known_keys
from mrpo.config.resolvers import register_resolvers
from mrpo.data.pipeline import DataConfig
from mrpo.domains import Choice, Flag, Number, Text, setting
from mrpo.errors import ConfigError
from mrpo.evals import EvalConfig
from mrpo.models.policy import ModelConfig
from mrpo.objectives import LossConfig
from mrpo.objectives.weighting.registry import WeightsConfig
from mrpo.references.spec import ReferencesConfig
from mrpo.tracking.wandb import LoggerConfig
from mrpo.training.optimizer import OptimizerConfig, SchedulerConfig
from mrpo.training.trainer import TrainerConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The config tree shipped inside the package (``mrpo/conf``; a checkout links ``conf/`` to it)."""

STAGES = ("train", "cache")
NONFINITE_ACTIONS = ("stop", "skip")
"""What a non-finite training loss does: stop the run, or skip that optimizer step."""

SWEEPS_GROUP = "sweeps"
"""The config group of the sweep files (``mrpo/conf/sweeps``): ``mrpo-train -m +sweeps=<name>``."""


@dataclass
class PathsConfig:
    """Where a run reads data and writes its record and caches."""

    root_dir: str = setting(".", Text())
    output_dir: str = setting(MISSING, Text())
    data_dir: str | None = setting(None, Text(nullable=True))
    cache_dir: str = setting(MISSING, Text())


@dataclass
class NanGuardConfig:
    """What a non-finite training loss does (:class:`mrpo.training.PreferenceModule`)."""

    action: str = setting("stop", Choice(NONFINITE_ACTIONS))


@dataclass
class TrainConfig:
    """Primary config of ``mrpo-train``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    nan_guard: NanGuardConfig = field(default_factory=NanGuardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    stage: str = setting("train", Choice(STAGES))  # cache: fill the reference cache and stop
    # Lightning seeds numpy too, whose seeds are unsigned 32-bit integers.
    seed: int = setting(0, Number(int, ge=0, lt=2**32))
    ckpt_path: str | None = setting(None, Text(nullable=True))  # last | best | a .ckpt file
    # Resume even when the checkpoint's settings or data differ.
    force_resume: bool = setting(False, Flag())
    # Train even when the memory plan says the device is too small.
    force_memory: bool = setting(False, Flag())
    save_model: bool = setting(True, Flag())
    task_name: str = setting("train", Text())


@dataclass
class EvalRunConfig:
    """Primary config of ``mrpo-eval`` (scoring is deterministic: greedy decoding and the
    harness's fixed few-shot seed, so there is no ``seed``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoint: str | None = setting(None, Text(nullable=True))
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = setting("eval", Text())


Schema = TypeVar("Schema", TrainConfig, EvalRunConfig)


def to_dataclass(cfg: DictConfig, schema: type[Schema]) -> Schema:
    """The composed config as its schema's dataclass (``TrainConfig``, ``EvalRunConfig``).

    Raises:
        ConfigError: a required value (``???``) was left unset (naming its key), or the
            config was composed from another primary config than ``schema``'s.
    """
    check_known_keys(cfg)
    try:
        result = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key or "?"
        raise ConfigError(
            key, f"required value is missing (??? in the config); set it, e.g. {key}=..."
        ) from None
    if not isinstance(result, schema):
        raise ConfigError(
            "defaults", f"the config is not a {schema.__name__} (got {type(result).__name__})"
        )
    return result


def resolved_container(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain, fully resolved Python containers (for records and W&B)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(f"a composed config is a mapping, got {type(container).__name__}")
    return {str(k): v for k, v in container.items()}


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore and the configs' resolvers (called by
    the entry points)."""
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalRunConfig)
