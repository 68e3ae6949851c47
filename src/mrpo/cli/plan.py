"""The run's plan (:mod:`mrpo.planning.plan`) from the config: its settings, the line printed
at the start of a run, and the refusal of a run that cannot fit (``force_memory``)."""

from __future__ import annotations

import logging
import shlex

from mrpo.config.schema import TrainConfig
from mrpo.data.pipeline import PreparedData, pair_layout
from mrpo.errors import option_keys
from mrpo.groups.references import build_ensemble
from mrpo.models.parallel import wants_cuda
from mrpo.models.policy import model_cache_dir
from mrpo.planning.plan import PlanSettings, RunPlan, check_fits, fsdp_shards, make_plan

log = logging.getLogger("mrpo.train")


def plan_settings(cfg: TrainConfig) -> PlanSettings:
    """The settings of the run its plan reads."""
    m, t = cfg.model, cfg.trainer
    cuda = wants_cuda(t.kwargs())
    return PlanSettings(
        source=m.source,
        model_cache_dir=model_cache_dir(cfg.paths.cache_dir),
        speed_dir=cfg.paths.cache_dir,
        lora=m.lora,
        dtype=m.dtype,
        quantization=m.quantization,
        gradient_checkpointing=m.gradient_checkpointing,
        fused_head=m.fused_lm_head,
        tile_tokens=m.lm_head_chunk_tokens,
        attn_implementation=m.attn_implementation,
        layout=pair_layout(cfg.data),
        batch_size=cfg.data.batch_size,
        accumulate=t.accumulate_grad_batches,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        precision=t.precision,
        optimizer=cfg.optimizer._target_,
        reference_mode=cfg.references.mode,
        cuda=cuda,
        shards=fsdp_shards(t.strategy, t.devices, t.num_nodes) if cuda else 1,
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
