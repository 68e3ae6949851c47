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
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mrpo.checks import ConfigError, check_train_config, num_references
from mrpo.config import CONFIG_DIR, TrainConfig, register_configs, to_dataclass
from mrpo.errors import InputError
from mrpo.module import NonFiniteLossError
from mrpo.pipeline import (
    build_callbacks,
    build_objective,
    fit_offline_weights,
    live_references,
    load_policy,
    prepare_data,
    prepare_references,
    wandb_settings,
)
from mrpo.runrecord import write_json
from mrpo.tracking import environment_record, finish_wandb, make_loggers, wandb_run_dir

log = logging.getLogger("mrpo.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config and return its final metrics."""
    run_cfg: TrainConfig = to_dataclass(cfg)
    check_train_config(run_cfg)
    output_dir = Path(run_cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(run_cfg.seed, workers=True)
    started = time.perf_counter()

    data = prepare_data(run_cfg)
    refs = prepare_references(run_cfg, data)
    if run_cfg.stage == "cache":
        summary = {"stage": "cache", **refs.stats, "seconds": time.perf_counter() - started}
        log.info("reference cache filled: %s", summary)
        write_json(output_dir / "summary.json", summary)
        return summary

    from mrpo.datamodule import PreferenceDataModule
    from mrpo.module import PreferenceModule

    policy, tokenizer = load_policy(run_cfg)
    objective = build_objective(run_cfg)
    fit_offline_weights(objective, refs, data)
    module = PreferenceModule(
        policy,
        tokenizer,
        objective,
        hydra.utils.instantiate(run_cfg.optimizer),
        scheduler_name=run_cfg.scheduler.name,
        warmup_ratio=run_cfg.scheduler.warmup_ratio,
        length_normalize=run_cfg.loss.length_normalize,
        logprob_chunk_size=run_cfg.model.logprob_chunk_size,
        fused_head=run_cfg.model.fused_lm_head,
        head_chunk_tokens=run_cfg.model.lm_head_chunk_tokens,
        live_references=live_references(refs, policy, data),
        on_nonfinite=run_cfg.callbacks.get("nan_guard", {}).get("action", "stop"),
    )
    datamodule = PreferenceDataModule(
        data.train_pairs,
        data.val_pairs,
        pad_token_id=tokenizer.pad_token_id,
        ref_lookup=refs.table,
        batch_size=run_cfg.data.batch_size,
        eval_batch_size=run_cfg.data.eval_batch_size,
        group_by_length=run_cfg.data.group_by_length,
        seed=run_cfg.seed,
        num_workers=run_cfg.data.num_workers,
    )
    loggers = make_loggers(
        output_dir, wandb_settings(run_cfg), OmegaConf.to_container(cfg, resolve=True)
    )
    callbacks = build_callbacks(run_cfg, output_dir, data, tokenizer)
    trainer_kwargs = dict(run_cfg.trainer)
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
    ckpt_path = _resolve_ckpt_path(run_cfg.ckpt_path, output_dir)
    before = {} if ckpt_path else _validate(trainer, module, datamodule)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    after = _validate(trainer, module, datamodule)

    summary: dict[str, Any] = {
        "run_dir": str(output_dir),
        "wandb_dir": wandb_run_dir(loggers),
        "loss": run_cfg.loss.name,
        "num_refs": num_references(run_cfg),
        "weighting": run_cfg.weights.strategy,
        "seed": run_cfg.seed,
        "global_step": trainer.global_step,
        "seconds": time.perf_counter() - started,
        "reference_cache": refs.stats,
        "data": data.report,
        "environment": environment_record(),
        **{f"before/{k}": v for k, v in before.items()},
        **{f"final/{k}": v for k, v in after.items()},
        **{f"final/{k}": v for k, v in _callback_metrics(trainer, "eval/").items()},
    }
    if not trainer.is_global_zero:  # other data-parallel ranks: rank 0 keeps the record
        return summary
    if run_cfg.save_model:
        summary["model_dir"] = str(_save_policy(module, output_dir / "model"))
    write_json(output_dir / "summary.json", summary)
    finish_wandb(loggers, summary)
    _print_summary(summary)
    return summary


def _resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path != "last":
        return ckpt_path
    last = _last_checkpoint(output_dir)
    if not last.exists():
        raise ConfigError(f"ckpt_path: 'last' but there is no {last}; start without it")
    return str(last)


def _last_checkpoint(output_dir: Path) -> Path:
    return output_dir / "checkpoints" / "last.ckpt"


def _validate(trainer: L.Trainer, module: Any, datamodule: Any) -> dict[str, float]:
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _callback_metrics(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def _save_policy(module: Any, target: Path) -> Path:
    """Save the final policy as a transformers model directory (LoRA merged in)."""
    policy = module.policy
    if hasattr(policy, "merge_and_unload"):
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
        last = _last_checkpoint(Path(cfg.paths.output_dir))
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
