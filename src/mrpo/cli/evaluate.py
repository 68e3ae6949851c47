"""``mrpo-eval``: score a model or a training checkpoint on GSM8K, TruthfulQA and any
lm-evaluation-harness task (Hydra entry).

What is scored:

- ``model.source=...``: a hub id, a local model directory or ``packaged:smollm2-135m-instruct``;
- ``checkpoint=<run>/model``: a training run's saved model directory;
- ``checkpoint=<run>/checkpoints/last.ckpt``: a Lightning checkpoint, whose policy weights are
  loaded into ``model.source`` (the base model the run started from; for a LoRA run also
  ``model=lora`` with the run's ``model.lora`` settings).

Order of work, cheapest checks first: config checks -> evaluation data -> model -> scoring ->
``eval_results.json``, ``samples.jsonl``, W&B (offline without an API key) -> a score table.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mrpo.atomic import write_text
from mrpo.config import CONFIG_DIR, EvalRunConfig, register_configs, to_dataclass
from mrpo.config.compose import exit_on_bad_command_line
from mrpo.config.schema import resolved_container
from mrpo.errors import ConfigError, InputError, OptionError
from mrpo.evals.runner import (
    format_scores,
    load_eval_data,
    record_evaluation,
    run_eval_suite,
)
from mrpo.groups.checks import check_eval_run_config
from mrpo.models import checkpoint
from mrpo.models.policy import model_cache_dir
from mrpo.tracking.record import CONFIG_FILE, environment_record
from mrpo.tracking.wandb import make_loggers

log = logging.getLogger("mrpo.evaluate")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run one evaluation job from a composed ``eval`` config; return what it wrote.

    The returned dict is the content of ``<paths.output_dir>/eval_results.json``: ``metrics``
    (``eval/<name>/<metric>`` -> value, counts and seconds included), the model source,
    checkpoint, tasks, limit, batch size, timings and the run directory.
    """
    run_cfg = to_dataclass(cfg, EvalRunConfig)
    check_eval_run_config(run_cfg)
    output_dir = Path(run_cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    started = time.perf_counter()

    ev = run_cfg.eval
    try:
        data = load_eval_data(ev.tasks, data_dir=run_cfg.paths.data_dir, harness=ev.harness)
    except OptionError as err:  # an lm-eval task that cannot load (named in the message)
        raise ConfigError(f"eval.{err.option}", str(err)) from None
    except ValueError as err:  # a missing or malformed data file
        raise ConfigError("paths.data_dir", str(err)) from None
    model, tokenizer = load_evaluated_model(run_cfg)
    setup_seconds = time.perf_counter() - started
    output = run_eval_suite(
        model,
        tokenizer,
        ev.tasks,
        limit=ev.limit,
        data=data,
        batch_size=ev.batch_size,
        max_new_tokens=ev.max_new_tokens,
        draft_tokens=ev.draft_tokens,
        progress=True,
        harness=ev.harness,
    )
    results: dict[str, Any] = {
        "run_dir": str(output_dir),
        "model": checkpoint.evaluated_source(run_cfg.model.source, run_cfg.checkpoint),
        "checkpoint": run_cfg.checkpoint,
        "tasks": list(ev.tasks),
        "limit": ev.limit,
        "batch_size": ev.batch_size,
        "max_new_tokens": ev.max_new_tokens,
        "draft_tokens": ev.draft_tokens,
        "setup_seconds": setup_seconds,
        "seconds": time.perf_counter() - started,
        "metrics": output.metrics,
        "task_info": output.info,
        "environment": environment_record(),
    }
    tags = ["eval", *(f"task:{t}" for t in ev.tasks)]
    loggers = make_loggers(output_dir, run_cfg.logger, resolved_container(cfg), tags=tags)
    record_evaluation(output_dir, output, results, loggers, ev.log_samples)
    print(format_scores(results), flush=True)
    return results


def load_evaluated_model(cfg: EvalRunConfig) -> tuple[Any, Any]:
    """The model to score and its tokenizer (:func:`mrpo.models.checkpoint.load_evaluated_model`);
    a source that cannot be loaded is a :class:`ConfigError` naming the config key."""
    cache = model_cache_dir(cfg.paths.cache_dir)
    try:
        return checkpoint.load_evaluated_model(cfg.model, cfg.checkpoint, cache_dir=cache)
    except OptionError as err:
        key = err.option if err.option == "checkpoint" else f"model.{err.option}"
        raise ConfigError(key, str(err)) from None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except InputError as err:
        # A user error (config, data, model source, checkpoint): no traceback, exit 2.
        log.error("%s: %s", err.kind, err)
        sys.exit(2)


def main() -> None:
    """Console script ``mrpo-eval``."""
    register_configs()
    exit_on_bad_command_line(CONFIG_DIR, "eval", "mrpo.evaluate")
    _hydra_main()


if __name__ == "__main__":
    main()
