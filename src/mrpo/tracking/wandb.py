"""The run's loggers: Weights & Biases (online or offline), the local CSV record, and the
optional TensorBoard and MLflow loggers (:mod:`mrpo.tracking.backends`).

The CSV files are part of the local run record (layout: :mod:`mrpo.tracking.record`). W&B mode
``auto`` is online when an API key is configured and offline otherwise; an online
start that fails (no network, bad key) falls back to offline, never to a crash or a prompt.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from mrpo.atomic import write_text
from mrpo.compare.records import flatten_config
from mrpo.domains import Choice, Flag, Items, Number, Text, setting
from mrpo.tracking.backends import LoggerRun, optional_loggers
from mrpo.tracking.mode import WANDB_MODES, resolve_wandb_mode
from mrpo.tracking.record import WANDB_ID_FILE, next_attempt

log = logging.getLogger(__name__)

__all__ = [
    "WANDB_MODES",
    "LoggerConfig",
    "finish_wandb",
    "make_loggers",
    "resolve_wandb_mode",
    "wandb_run_dir",
]


@dataclass
class LoggerConfig:
    """The loggers of a run (the schema of the ``logger`` config group).

    Attributes:
        wandb: log to W&B at all (the local CSV record is always written).
        tensorboard: also write TensorBoard event files (``<run>/tensorboard/``).
        mlflow: also log to the local MLflow store in ``mlflow_dir`` (experiment ``project``).
        mlflow_dir: the folder of the MLflow store (``mlflow.db``), shared by every run and
            sweep job (``mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db`` lists them).
        project, entity, group, job_type, tags: the W&B run's place and labels; ``group``
            None lets the entry point pick one (a multirun's sweep directory name).
        mode: one of :data:`WANDB_MODES`; ``auto`` is online with an API key, else offline.
        init_timeout: seconds an online start may take before the run falls back to offline.
    """

    wandb: bool = setting(True, Flag())
    tensorboard: bool = setting(False, Flag())
    mlflow: bool = setting(False, Flag())
    mlflow_dir: str = setting("outputs/mlruns", Text())
    project: str = setting("mrpo", Text())
    entity: str | None = setting(None, Text(nullable=True))
    group: str | None = setting(None, Text(nullable=True))
    job_type: str = setting("train", Text())
    tags: list[str] = setting([], Items(Text()))
    mode: str = setting("auto", Choice(WANDB_MODES))
    init_timeout: float = setting(60.0, Number(float, gt=0))


def make_loggers(
    output_dir: Path,
    settings: LoggerConfig,
    config: Mapping[str, Any],
    *,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
) -> list[Logger]:
    """The run's loggers: always a CSV logger, W&B unless disabled, then the optional ones.

    The W&B run is started here (not lazily at the first metric) so a failing online start
    falls back to offline before training begins. A resumed run (same ``output_dir``)
    continues the same W&B run id.

    Args:
        output_dir: the run directory.
        settings: the ``logger`` config.
        config: the resolved config, stored with the W&B run.
        name: the W&B run's name (None: W&B picks one).
        group: the W&B group when ``settings.group`` is None.
        tags: tags put before ``settings.tags``.
    """
    attempt = next_attempt(output_dir)  # before any logger writes: all name the same attempt
    loggers: list[Logger] = [CSVLogger(save_dir=str(output_dir), name="csv", version=attempt)]
    tags = [*tags, *settings.tags]
    group = settings.group or group
    if settings.wandb:
        mode = resolve_wandb_mode(settings.mode)
        if mode != "disabled":
            loggers.append(_start_wandb(output_dir, settings, mode, config, name, group, tags))
    params = flatten_config(config)
    run = LoggerRun(output_dir, attempt, settings, params, name, group, tags)
    return [*loggers, *optional_loggers(run)]


def _start_wandb(
    output_dir: Path,
    settings: LoggerConfig,
    mode: str,
    config: Mapping[str, Any],
    name: str | None,
    group: str | None,
    tags: list[str],
) -> WandbLogger:
    import wandb

    if wandb.run is not None:
        # WandbLogger reuses a run left open in this process (an earlier job of an in-process
        # multirun that failed before finishing it): this job would log into that run.
        log.warning("closing the W&B run %s left open in this process", wandb.run.id)
        wandb.finish()
    id_file = output_dir / WANDB_ID_FILE
    # 16 hex digits: ids stay distinct across the many thousands of runs of a project.
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(8)
    write_text(id_file, run_id)
    kwargs: dict[str, Any] = dict(
        name=name,
        save_dir=str(output_dir),
        project=settings.project,
        entity=settings.entity,
        group=group,
        job_type=settings.job_type,
        tags=tags,
        id=run_id,
        resume="allow",
        config=dict(config),
    )
    try:
        mode_settings = wandb.Settings(
            mode=mode,  # type: ignore[arg-type]  # one of WANDB_MODES, resolved above
            init_timeout=settings.init_timeout,
            silent=True,
        )
        return _started(kwargs, mode_settings)
    except Exception as err:  # network, auth and service errors all mean: go offline
        if mode == "offline":
            raise
        log.warning("W&B could not start online (%s); logging offline instead.", err)
        # The failed start still holds the run id in the W&B service: stop the service.
        wandb.teardown()
        return _started(kwargs, wandb.Settings(mode="offline", silent=True))


def _started(kwargs: dict[str, Any], settings: Any) -> WandbLogger:
    """A W&B logger started now: failures surface here, not mid-training."""
    logger = WandbLogger(**kwargs, settings=settings)
    _drop_unset_anonymous(logger)
    _ = logger.experiment
    return logger


def _drop_unset_anonymous(logger: Any) -> None:
    # Lightning passes anonymous=None to wandb.init always; wandb >= 0.2x prints a deprecation
    # warning for the key itself, on every run. Unset, it means nothing: leave it out.
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)


def wandb_run_dir(loggers: Sequence[Logger]) -> str | None:
    """The local directory of the W&B run (what ``wandb sync`` takes), if there is one."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            return str(Path(lg.experiment.dir).parent)
    return None


def finish_wandb(loggers: Sequence[Logger], summary: Mapping[str, Any]) -> None:
    """Write final scores into the W&B run summary and close the run (one run per job)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            run = lg.experiment
            for key, value in summary.items():
                if isinstance(value, int | float | str | bool):
                    run.summary[key] = value
            run.finish()
