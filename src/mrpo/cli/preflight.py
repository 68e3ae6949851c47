"""The pre-flight of ``mrpo-train``: what needs the machine and the files, checked after the
config checks (:mod:`mrpo.groups.checks`) and before any model loads, cheapest first: folders
writable, the objects Lightning, torch and transformers would refuse later built on dummies,
the evaluation data, the checkpoint to resume, every model source (weight files, tokenizer and
chat template, LoRA targets, context length, attention support). After the data is tokenized,
:func:`check_prepared_data` compares it with the run and a resumed run with its checkpoint.
A value that is legal but almost surely a mistake is a warning in the log.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrpo.atomic import check_writable
from mrpo.callbacks.settings import check_callbacks
from mrpo.config.schema import TrainConfig
from mrpo.data.pipeline import PreparedData
from mrpo.errors import ConfigError, option_keys, option_prefix
from mrpo.evals.runner import EvalData
from mrpo.groups.objective import build_weighting
from mrpo.groups.references import build_ensemble, num_references, reference_specs
from mrpo.models.integrity import check_source
from mrpo.models.loading import model_config
from mrpo.models.policy import ModelConfig, check_architecture, model_cache_dir
from mrpo.models.sources import source_option
from mrpo.planning.plan import PlanSettings, RunPlan, check_fits, make_plan, step_warnings
from mrpo.references.spec import POLICY_SOURCES, ReferenceSpec
from mrpo.tracking.rundir import check_resume
from mrpo.training.checkpointing import read_checkpoint_identity, resolve_ckpt_path
from mrpo.training.metrics import logged_metric_names
from mrpo.training.optimizer import check_optimizer, check_scheduler
from mrpo.training.trainer import check_trainer

log = logging.getLogger("mrpo.train")


@dataclass
class Preflight:
    """What the pre-flight found and the later steps reuse.

    Attributes:
        ckpt_path: the checkpoint file to resume from (``last``/``best`` resolved), or None.
        checkpoint_identity: the run identity that checkpoint recorded (None without one).
        eval_data: each evaluation task's data, loaded once.
        warnings: what was legal but probably a mistake (already logged).
    """

    ckpt_path: str | None = None
    checkpoint_identity: dict[str, Any] | None = None
    eval_data: EvalData | None = None
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)


def preflight_train(cfg: TrainConfig, output_dir: Path) -> Preflight:
    """Check the machine, the files and the objects the run will build; load no model.

    Raises:
        InputError: naming the key, file or row of the first problem found.
    """
    found = Preflight()
    with option_prefix():  # the options named are top-level keys
        check_writable(output_dir, "hydra.run.dir")
        check_writable(Path(cfg.paths.cache_dir), "paths.cache_dir")
    check_built_objects(cfg)
    if cfg.eval.tasks:
        with option_prefix("eval"):
            found.eval_data = cfg.eval.load_data(cfg.paths.data_dir)
    with option_prefix():
        found.ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
        if found.ckpt_path is not None:
            found.checkpoint_identity = read_checkpoint_identity(found.ckpt_path)
    if found.ckpt_path is not None and found.checkpoint_identity is None:
        found.warn(
            f"{found.ckpt_path} records no run settings (saved by an older mrpo): resuming "
            "without checking that its settings and data match this run's"
        )
    check_model_sources(cfg, found)
    return found


def check_built_objects(cfg: TrainConfig) -> None:
    """What torch, transformers and Lightning would refuse later, built now on dummies: the
    optimizer, the scheduler, the Trainer, the callbacks (no file is read)."""
    with option_prefix("optimizer"):
        check_optimizer(cfg.optimizer)
    with option_prefix("scheduler"):
        check_scheduler(cfg.scheduler)
    with option_prefix("trainer"):
        check_trainer(cfg.trainer)
    with option_prefix("callbacks"):
        check_callbacks(cfg.callbacks, logged_metric_names(num_references(cfg)), cfg.eval.tasks)


def check_model_sources(cfg: TrainConfig, found: Preflight) -> None:
    """Weight files, tokenizers and chat templates of the policy and of every reference (each
    source once: :func:`mrpo.models.integrity.check_source`), then the policy's context
    length and architecture (:func:`mrpo.models.policy.check_architecture`)."""
    cache, m = model_cache_dir(cfg.paths.cache_dir), cfg.model
    sources: list[tuple[str, ModelConfig | ReferenceSpec]] = [("model", m)]
    for i, spec in enumerate(reference_specs(cfg)):
        if spec.source not in POLICY_SOURCES:  # "self", "moving": the policy, checked above
            sources.append((f"references.pool.{i}", spec))
    for prefix, s in sources:
        with option_prefix(prefix):
            check_source(s.source, s.tokenizer, s.chat_template, cache)
    with option_prefix("model"):
        with source_option("source"):
            config = model_config(m.source, cache_dir=cache)
        context = getattr(config, "max_position_embeddings", None)
        if isinstance(context, int) and cfg.data.max_length > context:
            found.warn(
                f"data.max_length={cfg.data.max_length} is beyond the model's context of "
                f"{context} positions: longer pairs will score badly; lower data.max_length"
            )
        check_architecture(m, config)


def check_prepared_data(
    cfg: TrainConfig,
    train_pairs: int,
    val_pairs: int,
    identity: Mapping[str, Any],
    found: Preflight,
) -> None:
    """Checks that need the data's size and fingerprints (still no model loaded).

    Raises:
        ConfigError: a validation split the weighting cannot do without, or a resume whose
            checkpoint was saved with other settings or data (unless ``force_resume``).
    """
    weighting = None if cfg.loss.name == "dpo" else build_weighting(cfg)
    needs_val = weighting is not None and (weighting.fits_on_validation or weighting.needs_feedback)
    if val_pairs == 0:
        if needs_val:
            raise ConfigError(
                "data.val_size",
                f"gives 0 validation pairs, but weighting {cfg.weights.strategy!r} "
                "needs them; raise data.val_size",
            )
        total = train_pairs + val_pairs
        found.warn(
            f"data.val_size={cfg.data.val_size} gives 0 validation pairs of {total}: no "
            "validation metrics, and no best checkpoint"
        )
    for message in step_warnings(plan_settings(cfg), train_pairs, cfg.scheduler.warmup_ratio):
        found.warn(message)
    with option_prefix():  # ckpt_path: a top-level key
        saved, force = found.checkpoint_identity, cfg.force_resume
        for message in check_resume(saved, identity, found.ckpt_path, force):
            found.warn(message)


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
