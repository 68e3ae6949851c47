"""``mrpo-train``: train a policy against K frozen references (Hydra entry point).

The order of work (docs/architecture.md, "One training run"): config checks, the run directory
claimed, pre-flight, data, the run's plan, the reference cache, then the groups' builds
(:func:`build_run`), the fit and the record. A job that fails records it (``summary.json``
with ``status: failed``); in a multirun the sweep goes on with its next job
(:mod:`mrpo.compare.sweep_report` tells at the end which failed).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

import mrpo.data.pipeline
import mrpo.models.policy
from mrpo.atomic import write_text
from mrpo.callbacks.eval import final_eval_metrics
from mrpo.callbacks.throughput import throughput_summary
from mrpo.cli.preflight import (
    Preflight,
    announce_plan,
    check_prepared_data,
    preflight_train,
    run_command,
)
from mrpo.config import CONFIG_DIR, TrainConfig, register_configs, to_dataclass
from mrpo.config.compose import exit_on_bad_command_line
from mrpo.config.schema import resolved_container
from mrpo.data.layout import layout_for
from mrpo.data.module import PreferenceDataModule
from mrpo.data.pipeline import PreparedData, pair_layout, tokenized_cache_dir
from mrpo.errors import InputError, option_prefix
from mrpo.groups.callbacks import build_callbacks
from mrpo.groups.checks import check_train_config
from mrpo.groups.objective import build_objective
from mrpo.groups.references import build_ensemble, num_references, reference_specs
from mrpo.models import load_tokenizer
from mrpo.models.merge import save_policy
from mrpo.models.parallel import ShardedTraining, wants_cuda
from mrpo.models.policy import model_cache_dir
from mrpo.planning.plan import RunPlan, memory_record, remember_speed, save_card
from mrpo.references.prepared import (
    PreparedReferences,
    fit_offline_weights,
    prepare_references,
    reference_scoring,
)
from mrpo.tracking.console import hardware_line, print_summary, quiet_bitsandbytes, quiet_libraries
from mrpo.tracking.record import CONFIG_FILE, environment_record, write_failure, write_summary
from mrpo.tracking.rundir import claim_run_dir, is_launch_leader, run_identity
from mrpo.tracking.wandb import finish_wandb, make_loggers, wandb_run_dir
from mrpo.training.checkpointing import last_checkpoints
from mrpo.training.fitting import fit_and_validate
from mrpo.training.module import NonFiniteLossError, PreferenceModule
from mrpo.training.optimizer import build_optimizer
from mrpo.training.trainer import build_trainer, policy_device

log = logging.getLogger("mrpo.train")


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """The run's data (:func:`mrpo.data.pipeline.prepare_data`), tokenized by the policy's
    tokenizer; a split the data cannot give is a config error naming its ``data`` key."""
    m, cache = cfg.model, model_cache_dir(cfg.paths.cache_dir)
    tokenizer = load_tokenizer(
        m.tokenizer or m.source, chat_template=m.chat_template, cache_dir=cache
    )
    with option_prefix("data"):
        return mrpo.data.pipeline.prepare_data(
            cfg.data,
            tokenizer,
            data_dir=cfg.paths.data_dir,
            cache_dir=tokenized_cache_dir(cfg.paths.cache_dir),
            references=lambda: build_ensemble(cfg),
        )


def load_policy(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """The trainable policy and its tokenizer (:func:`mrpo.models.policy.load_policy`)."""
    cache, device = model_cache_dir(cfg.paths.cache_dir), policy_device(cfg.trainer)
    return mrpo.models.policy.load_policy(cfg.model, cache_dir=cache, device=device)


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
        f"weights:{cfg.weights.strategy}",
        f"seed:{cfg.seed}",
    ]
    return {"name": name, "group": group, "tags": tags}


def is_quantizing(cfg: TrainConfig) -> bool:
    """Whether the policy or a reference loads quantized weights."""
    specs = reference_specs(cfg)
    return cfg.model.quantization is not None or any(s.quantization for s in specs)


@dataclass
class TrainingRun:
    """What :func:`build_run` assembles and :func:`train` fits."""

    module: PreferenceModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer
    loggers: list[Logger]
    sharding: ShardedTraining | None = None
    plan: RunPlan | None = None
    resolved: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunProgress:
    """How far a job got, for the record of a failure: the directory, once claimed as this
    run's, and the Trainer, once built."""

    output_dir: Path | None = None
    trainer: L.Trainer | None = None


def train(cfg: DictConfig, progress: RunProgress | None = None) -> dict[str, Any]:
    """Run one training job from a composed config and return its final metrics."""
    progress = progress if progress is not None else RunProgress()
    run_cfg = to_dataclass(cfg, TrainConfig)
    check_train_config(run_cfg)
    output_dir = Path(run_cfg.paths.output_dir)
    claim_run_dir(output_dir, resuming=run_cfg.ckpt_path is not None)
    progress.output_dir = output_dir
    log.info("%s", hardware_line(wants_cuda(run_cfg.trainer.kwargs())))
    quiet_bitsandbytes(quantizing=is_quantizing(run_cfg))
    found = preflight_train(run_cfg, output_dir)
    resolved = resolved_container(cfg)
    if is_launch_leader():
        write_text(output_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(run_cfg.seed, workers=True)
    started = time.perf_counter()

    data = prepare_data(run_cfg)
    fingerprints = {k: data.report[k] for k in ("train_fingerprint", "val_fingerprint")}
    identity = run_identity(resolved, fingerprints)
    check_prepared_data(run_cfg, len(data.train_pairs), len(data.val_pairs), identity, found)
    plan = announce_plan(run_cfg, data)  # refuses a run too large for the device
    specs, ensemble_of = reference_specs(run_cfg), partial(build_ensemble, run_cfg)
    refs = prepare_references(specs, ensemble_of, run_cfg.references.mode, data)
    if run_cfg.stage == "cache":
        summary = {"stage": "cache", **refs.stats, "seconds": time.perf_counter() - started}
        log.info("reference cache filled: %s", summary)
        write_summary(output_dir, summary)
        return summary

    run = build_run(run_cfg, resolved, data, refs, output_dir, identity, found)
    run.plan, run.resolved = plan, resolved
    progress.trainer = run.trainer
    before, after = fit_and_validate(run.trainer, run.module, run.datamodule, found.ckpt_path)
    summary = summarize(run_cfg, run, data, refs, before, after, time.perf_counter() - started)
    summary["warnings"] = found.warnings
    # A sharded policy is gathered by every rank together before rank 0 saves it.
    whole = None
    if run_cfg.save_model and run.sharding is not None:
        whole = run.sharding.full_state_dict(run.trainer.strategy, run.module.policy)
    if run.trainer.is_global_zero:  # other data-parallel ranks: rank 0 keeps the record
        finish(run_cfg, run, summary, output_dir, whole)
    return summary


def build_run(
    cfg: TrainConfig,
    resolved: dict[str, Any],
    data: PreparedData,
    refs: PreparedReferences,
    output_dir: Path,
    identity: dict[str, Any],
    found: Preflight,
) -> TrainingRun:
    """The groups' builds in order: policy, objective (offline weights fitted), reference
    scoring, the module, the data module, loggers, callbacks and Trainer."""
    sharding, (policy, tokenizer) = cfg.trainer.sharding(), load_policy(cfg)
    objective = build_objective(cfg)
    fit_offline_weights(objective, refs, data)
    moving, scorer = reference_scoring(refs, policy, data)
    m, d = cfg.model, cfg.data
    module = PreferenceModule(
        policy,
        tokenizer,
        objective,
        build_optimizer(cfg.optimizer),
        scheduler_name=cfg.scheduler.name,
        warmup_ratio=cfg.scheduler.warmup_ratio,
        length_normalize=cfg.loss.length_normalize,
        logprob_chunk_size=m.logprob_chunk_size,
        fused_head=m.fused_lm_head,
        head_chunk_tokens=m.lm_head_chunk_tokens,
        live_references=scorer,
        on_nonfinite=cfg.nan_guard.action,
        run_identity=identity,
        parallelize=None if sharding is None else sharding.parallelize,
        moving_references=moving,
    )
    datamodule = PreferenceDataModule(
        data.train_pairs,
        data.val_pairs,
        pad_token_id=tokenizer.pad_token_id,
        ref_lookup=refs.table,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        group_by_length=d.group_by_length,
        seed=cfg.seed,
        num_workers=d.num_workers,
        layout=layout_for(policy, pair_layout(d)),
        max_tokens_per_batch=d.max_tokens_per_batch,
        test_pairs=data.test_pairs,
    )
    loggers = make_loggers(output_dir, cfg.logger, resolved, **logger_labels(cfg))
    callbacks = build_callbacks(cfg, output_dir, data, tokenizer, objective, found.eval_data)
    strategy = None if sharding is None else sharding.strategy(cfg.trainer.kwargs())
    trainer = build_trainer(cfg.trainer, callbacks, loggers, output_dir, strategy)
    return TrainingRun(module, datamodule, trainer, loggers, sharding)


def summarize(
    cfg: TrainConfig,
    run: TrainingRun,
    data: PreparedData,
    refs: PreparedReferences,
    before: dict[str, float],
    after: dict[str, float],
    seconds: float,
) -> dict[str, Any]:
    """The run's summary: what it was, how long it took, and its scores before and after."""
    trainer = run.trainer
    throughput = throughput_summary(trainer.callbacks)  # type: ignore[attr-defined]
    return {
        "run_dir": cfg.paths.output_dir,
        "wandb_dir": wandb_run_dir(run.loggers),
        "loss": cfg.loss.name,
        "num_refs": num_references(cfg),
        "weighting": cfg.weights.strategy,
        "seed": cfg.seed,
        "global_step": trainer.global_step,
        "seconds": seconds,
        "reference_cache": refs.stats,
        "data": data.report,
        "throughput": throughput,
        "memory_plan": memory_record(run.plan, throughput.get("peak_memory_gb")),
        "environment": environment_record(),
        **{f"before/{k}": v for k, v in before.items()},
        **{f"final/{k}": v for k, v in after.items()},
        **{f"final/{k}": v for k, v in final_eval_metrics(trainer).items()},
    }


def finish(
    cfg: TrainConfig,
    run: TrainingRun,
    summary: dict[str, Any],
    output_dir: Path,
    whole: dict[str, Any] | None = None,
) -> None:
    """Save the final model, write ``summary.json``, close the W&B run, print the scores.

    ``whole``: the gathered state dict of a sharded policy; it is loaded into a fresh copy of
    the policy, which is saved instead of the sharded one.
    """
    if cfg.save_model:
        if whole is not None:
            fresh, _ = load_policy(cfg)
            fresh.load_state_dict(whole)
            run.module.policy = fresh
        cache = model_cache_dir(cfg.paths.cache_dir)
        target = output_dir / "model"
        model_dir = save_policy(run.module.policy, run.module.tokenizer, cfg.model, target, cache)
        summary["model_dir"] = str(model_dir)
        if run.plan is not None:
            save_card(model_dir, run.plan, run.resolved, summary, run_command())
    if run.plan is not None:
        remember_speed(cfg.paths.cache_dir, run.plan, summary)
    write_summary(output_dir, summary)
    finish_wandb(run.loggers, summary)
    print_summary(summary)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    progress = RunProgress()
    try:
        summary = train(cfg, progress)
    except InputError as err:
        # A user error (config, data, model source): its message, no traceback, exit 2.
        log.error("%s: %s", err.kind, err)
        if multirun and progress.output_dir is None:  # refused before it claimed its directory
            progress.output_dir = _own_directory(cfg)
        _failed(progress, err.kind, str(err), multirun, status=2)
        return None
    except NonFiniteLossError as err:
        # Diverged training is not a crash of the program: say where, and what is kept.
        output_dir = progress.output_dir or Path(cfg.paths.output_dir)
        last = last_checkpoints(output_dir)
        kept = f"resume from {last[0]}" if last else "no checkpoint was saved before it"
        log.error("training stopped: %s; %s", err, kept)
        _failed(progress, "non-finite loss", f"{err}; {kept}", multirun, status=3)
        return None
    except Exception as err:
        if not multirun:
            raise
        # One crashed job must not end the sweep: record it, with its traceback in the log.
        log.error("job crashed:\n%s", traceback.format_exc())
        _failed(progress, "crash", f"{type(err).__name__}: {err}", multirun, status=1)
        return None
    value = summary.get("final/val/rewards/accuracy")
    return None if value is None else float(value)  # the Optuna sweeper's objective


def _own_directory(cfg: DictConfig) -> Path | None:
    """A sweep job's directory, for the record of a job refused by the config checks (which
    run before the directory is claimed); None where it holds another run or cannot be named."""
    try:
        output_dir = Path(str(cfg.paths.output_dir))
        claim_run_dir(output_dir, resuming=False)
    except Exception:  # the refused value may be the directory itself
        return None
    return output_dir


def _failed(progress: RunProgress, kind: str, message: str, multirun: bool, *, status: int) -> None:
    """Record the failure in the run's directory, then exit with ``status`` (single run) or
    return None: a multirun goes on with its next job, and the Optuna sweeper counts a trial
    without a value as failed (a NaN would make it fail itself)."""
    # A single run stopped before it trained leaves its directory free for the corrected
    # command; a sweep job always records why it has no scores. Never into another run's dir.
    output_dir, trainer = progress.output_dir, progress.trainer
    if output_dir is not None and (multirun or trainer is not None) and is_launch_leader():
        write_failure(output_dir, kind, message, trainer)
    if not multirun:
        sys.exit(status)
    return None


def main() -> None:
    """Console script ``mrpo-train``."""
    quiet_libraries()
    register_configs()
    exit_on_bad_command_line(CONFIG_DIR, "train", "mrpo.train")
    _hydra_main()


if __name__ == "__main__":
    main()
