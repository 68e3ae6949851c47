"""Run tracking: Weights & Biases (online or offline) plus a local record that needs no W&B.

Every run writes, in its output directory:
- ``config.yaml``: the fully resolved config;
- ``csv/attempt_<n>/metrics.csv``: every logged metric over steps (Lightning's ``CSVLogger``),
  one folder per attempt, so a resumed run keeps what the interrupted attempt logged
  (:func:`metrics_files` lists them in order; later attempts win on repeated steps);
- ``summary.json``: final scores, timings, versions, the W&B run path, written at the end.
``mrpo-compare`` reads only these files.

W&B mode ``auto`` is online when an API key is configured and offline otherwise; an online
start that fails (no network, bad key) falls back to offline, never to a crash or a prompt.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from mrpo.runrecord import metrics_files

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id.txt"
_VERSIONED_PACKAGES = (
    "mrpo",
    "torch",
    "lightning",
    "transformers",
    "datasets",
    "peft",
    "hydra-core",
    "wandb",
)


@dataclass(frozen=True)
class WandbSettings:
    """Plain W&B settings for one run (built by the entry point from the config)."""

    enabled: bool
    project: str
    entity: str | None
    group: str | None
    job_type: str
    name: str | None
    tags: Sequence[str]
    mode: str  # auto | online | offline | disabled
    init_timeout: float = 60.0  # seconds before a failing online start falls back to offline


def resolve_wandb_mode(mode: str) -> str:
    """Turn ``auto`` into ``online`` or ``offline``; ``WANDB_MODE`` in the environment wins."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        return "offline" if env_mode == "dryrun" else env_mode
    if mode != "auto":
        return mode
    has_key = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_wandb()
    return "online" if has_key else "offline"


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def make_loggers(
    output_dir: Path, settings: WandbSettings, config: Mapping[str, Any]
) -> list[Logger]:
    """The run's loggers: always a CSV logger, plus W&B unless disabled.

    The W&B run is started here (not lazily at the first metric) so a failing online start
    falls back to offline before training begins. A resumed run (same ``output_dir``)
    continues the same W&B run id.
    """
    attempt = f"attempt_{len(metrics_files(output_dir))}"
    loggers: list[Logger] = [CSVLogger(save_dir=str(output_dir), name="csv", version=attempt)]
    if settings.enabled:
        mode = resolve_wandb_mode(settings.mode)
        if mode != "disabled":
            loggers.append(_start_wandb(output_dir, settings, mode, config))
    return loggers


def _start_wandb(
    output_dir: Path, settings: WandbSettings, mode: str, config: Mapping[str, Any]
) -> WandbLogger:
    import wandb

    id_file = output_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    id_file.write_text(run_id)
    kwargs: dict[str, Any] = dict(
        name=settings.name,
        save_dir=str(output_dir),
        project=settings.project,
        entity=settings.entity,
        group=settings.group,
        job_type=settings.job_type,
        tags=list(settings.tags),
        id=run_id,
        resume="allow",
        config=dict(config),
    )
    try:
        logger = WandbLogger(
            **kwargs,
            settings=wandb.Settings(mode=mode, init_timeout=settings.init_timeout, silent=True),
        )
        _ = logger.experiment  # start now: failures surface here, not mid-training
        return logger
    except Exception as err:  # network, auth and service errors all mean: go offline
        if mode == "offline":
            raise
        log.warning("W&B could not start online (%s); logging offline instead.", err)
        # The failed start still holds the run id in the W&B service: stop the service.
        wandb.teardown()
        logger = WandbLogger(**kwargs, settings=wandb.Settings(mode="offline", silent=True))
        _ = logger.experiment
        return logger


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


def environment_record() -> dict[str, Any]:
    """Package versions, python, platform and the git commit, for reproducibility."""
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
