"""``mrpo-train``: train a policy against K frozen references (Hydra entry point).

Order of work, cheapest checks first so a bad input never costs a model load:
config checks -> data loading and validation -> tokenization -> reference log-prob cache
(one reference model in memory at a time) -> policy -> validation before training -> fit ->
validation after training -> final model, summary and W&B summary.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel

from mrpo.atomic import write_json, write_text
from mrpo.callbacks import EvalCallback
from mrpo.cli.steps import (
    PreparedData,
    PreparedReferences,
    build_callbacks,
    fit_offline_weights,
    live_references,
    load_policy,
    logger_labels,
    prepare_data,
    prepare_references,
)
from mrpo.config import CONFIG_DIR, TrainConfig, register_configs, to_dataclass
from mrpo.config.build import build_objective, num_references
from mrpo.config.schema import resolved_container
from mrpo.config.validation import check_train_config
from mrpo.errors import ConfigError, InputError
from mrpo.tracking.record import CONFIG_FILE, SUMMARY_FILE, environment_record
from mrpo.tracking.wandb import finish_wandb, make_loggers, wandb_run_dir
from mrpo.training.module import NonFiniteLossError, PreferenceModule

log = logging.getLogger("mrpo.train")


@dataclass
class TrainingRun:
    """What :func:`build_run` assembles and :func:`fit` drives."""

    module: PreferenceModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer
    loggers: list[Logger]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config and return its final metrics."""
    run_cfg = to_dataclass(cfg, TrainConfig)
    check_train_config(run_cfg)
    output_dir = Path(run_cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(run_cfg.seed, workers=True)
    started = time.perf_counter()

    data = prepare_data(run_cfg)
    refs = prepare_references(run_cfg, data)
    if run_cfg.stage == "cache":
        summary = {"stage": "cache", **refs.stats, "seconds": time.perf_counter() - started}
        log.info("reference cache filled: %s", summary)
        write_json(output_dir / SUMMARY_FILE, summary)
        return summary

    run = build_run(run_cfg, resolved_container(cfg), data, refs, output_dir)
    before, after = fit(run, _resolve_ckpt_path(run_cfg.ckpt_path, output_dir))
    summary = summarize(run_cfg, run, data, refs, before, after, time.perf_counter() - started)
    if run.trainer.is_global_zero:  # other data-parallel ranks: rank 0 keeps the record
        finish(run_cfg, run, summary, output_dir)
    return summary


def build_run(
    cfg: TrainConfig,
    resolved: dict[str, Any],
    data: PreparedData,
    refs: PreparedReferences,
    output_dir: Path,
) -> TrainingRun:
    """The policy, the objective (offline weights fitted), the module, data and Trainer."""
    from mrpo.data.module import PreferenceDataModule

    policy, tokenizer = load_policy(cfg)
    objective = build_objective(cfg)
    fit_offline_weights(objective, refs, data)
    module = PreferenceModule(
        policy,
        tokenizer,
        objective,
        hydra.utils.instantiate(cfg.optimizer),
        scheduler_name=cfg.scheduler.name,
        warmup_ratio=cfg.scheduler.warmup_ratio,
        length_normalize=cfg.loss.length_normalize,
        logprob_chunk_size=cfg.model.logprob_chunk_size,
        fused_head=cfg.model.fused_lm_head,
        head_chunk_tokens=cfg.model.lm_head_chunk_tokens,
        live_references=live_references(refs, policy, data),
        on_nonfinite=cfg.callbacks.get("nan_guard", {}).get("action", "stop"),
    )
    datamodule = PreferenceDataModule(
        data.train_pairs,
        data.val_pairs,
        pad_token_id=tokenizer.pad_token_id,
        ref_lookup=refs.table,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        group_by_length=cfg.data.group_by_length,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
    )
    loggers = make_loggers(output_dir, cfg.logger, resolved, **logger_labels(cfg))
    callbacks = build_callbacks(cfg, output_dir, data, tokenizer, objective)
    trainer_kwargs = dict(cfg.trainer)
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        # No checkpoints configured: keep Lightning from adding its default one.
        trainer_kwargs["enable_checkpointing"] = False
    trainer = L.Trainer(
        **trainer_kwargs,
        # The data module's samplers split batches across ranks themselves.
        use_distributed_sampler=False,
        default_root_dir=str(output_dir),
        logger=loggers,
        callbacks=callbacks,
    )
    return TrainingRun(module, datamodule, trainer, loggers)


def fit(run: TrainingRun, ckpt_path: str | None) -> tuple[dict[str, float], dict[str, float]]:
    """Validate (unless resuming), train, validate; return the two validations' metrics."""
    before = {} if ckpt_path else _validate(run)
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt_path)
    return before, _validate(run)


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
    evals = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}
    # The validation after fit resets callback_metrics: the final evaluation's scores are kept
    # by the callback itself.
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, EvalCallback):
            evals.update(callback.final_metrics)
    return {
        "run_dir": cfg.paths.output_dir,
        "wandb_dir": wandb_run_dir(run.loggers),
        "loss": cfg.loss.name,
        "num_refs": num_references(cfg),
        "weighting": cfg.weights.get("strategy"),
        "seed": cfg.seed,
        "global_step": trainer.global_step,
        "seconds": seconds,
        "reference_cache": refs.stats,
        "data": data.report,
        "environment": environment_record(),
        **{f"before/{k}": v for k, v in before.items()},
        **{f"final/{k}": v for k, v in after.items()},
        **{f"final/{k}": v for k, v in evals.items()},
    }


def finish(cfg: TrainConfig, run: TrainingRun, summary: dict[str, Any], output_dir: Path) -> None:
    """Save the final model, write ``summary.json``, close the W&B run, print the scores."""
    if cfg.save_model:
        summary["model_dir"] = str(_save_policy(run.module, output_dir / "model"))
    write_json(output_dir / SUMMARY_FILE, summary)
    finish_wandb(run.loggers, summary)
    _print_summary(summary)


def _resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path != "last":
        return ckpt_path
    last = last_checkpoint(output_dir)
    if not last.exists():
        raise ConfigError("ckpt_path", f"'last' but there is no {last}; start without it")
    return str(last)


def last_checkpoint(output_dir: Path) -> Path:
    """Where a run directory's resumable ``last.ckpt`` is."""
    return output_dir / "checkpoints" / "last.ckpt"


def _validate(run: TrainingRun) -> dict[str, float]:
    results = run.trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _save_policy(module: PreferenceModule, target: Path) -> Path:
    """Save the final policy as a transformers model directory (LoRA merged in)."""
    policy: Any = module.policy  # a transformers model, or a peft wrapper of one
    if isinstance(policy, PeftModel):
        policy = policy.merge_and_unload()
    policy.save_pretrained(target)
    module.tokenizer.save_pretrained(target)
    return target


def _print_summary(summary: dict[str, Any]) -> None:
    keys = ("val/rewards/accuracy", "val/rewards/margin", "val/policy_margin_accuracy")
    lines = [
        "",
        f"run directory : {summary['run_dir']}",
        f"W&B run (sync): {summary['wandb_dir'] or 'disabled'}",
        f"{'metric':<32}{'before':>10}{'after':>10}",
    ]
    for key in keys:
        before = summary.get(f"before/{key}", float("nan"))
        after = summary.get(f"final/{key}", float("nan"))
        lines.append(f"{key:<32}{before:>10.4f}{after:>10.4f}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except InputError as err:
        # A user error (config, data, model source): its message, no traceback, exit 2.
        log.error("%s: %s", err.kind, err)
        sys.exit(2)
    except NonFiniteLossError as err:
        # Diverged training is not a crash of the program: say where, and what is kept.
        last = last_checkpoint(Path(cfg.paths.output_dir))
        kept = f"resume from {last}" if last.exists() else "no checkpoint was saved before it"
        log.error("training stopped: %s; %s", err, kept)
        sys.exit(3)
    value = summary.get("final/val/rewards/accuracy")
    return None if value is None else float(value)  # the Optuna sweeper's objective


def main() -> None:
    """Console script ``mrpo-train``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
