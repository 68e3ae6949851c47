"""The run's plan (:mod:`mrpo.planning.plan`) from the config: its settings, the line printed
at the start of a run, and the refusal of a run that cannot fit (``force_memory``)."""

from __future__ import annotations

import logging
import shlex

from mrpo.config.schema import TrainConfig
from mrpo.data.pipeline import PreparedData
from mrpo.errors import option_keys
from mrpo.groups.references import build_ensemble
from mrpo.planning.plan import PlanSettings, RunPlan, check_fits, make_plan

log = logging.getLogger("mrpo.train")


def plan_settings(cfg: TrainConfig) -> PlanSettings:
    """The settings of the run its plan reads."""
    return PlanSettings(
        cfg.model,
        cfg.data,
        cfg.trainer,
        cfg.optimizer._target_,
        cfg.references.mode,
        cfg.paths.cache_dir,
    )


def announce_plan(cfg: TrainConfig, data: PreparedData) -> RunPlan:
    """Make the plan, print its line and, for a training run, refuse it if it cannot fit."""
    plan = make_plan(plan_settings(cfg), build_ensemble(cfg), data)
    log.info("%s", plan.line())
    if cfg.stage == "train":
        check_memory(cfg, plan)
    return plan


def check_memory(cfg: TrainConfig, plan: RunPlan) -> None:
    """Refuse a run whose estimated peak exceeds the device, unless ``force_memory``.

    Raises:
        ConfigError: (``force_memory``) naming the overrides that would make it fit.
    """
    with option_keys({}, "force_memory"):
        check_fits(plan, force_memory=cfg.force_memory)


def run_command() -> str:
    """The command line that reproduces this run: ``mrpo-train`` and its overrides."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # composed in Python: the overrides are not known
        return "mrpo-train  # with the overrides of this run's config.yaml"
    return shlex.join(["mrpo-train", *HydraConfig.get().overrides.task])
