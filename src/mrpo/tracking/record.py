"""The layout of a run directory: the local record that needs no W&B to read.

This module is the one description of what a run directory holds:

- ``config.yaml``: the fully resolved config;
- ``csv/attempt_<n>/metrics.csv``: every logged metric over steps (Lightning's ``CSVLogger``),
  one folder per attempt, so a resumed run keeps what an interrupted attempt logged
  (:func:`metrics_files` lists them in order; later attempts win on repeated steps);
- ``summary.json``: once a run ended, its ``status``: ``finished`` with the final scores,
  timings, versions, git commit and the W&B run path, or ``failed`` with the failure's kind
  and message and what the run had reached (``global_step``, the last ``partial/`` metrics);
- ``wandb_run_id.txt`` and ``wandb/``: the W&B run's id (a resumed run continues it) and its
  files (``wandb sync`` uploads an offline run); see :mod:`mrpo.tracking.wandb`;
- ``checkpoints/``, ``model/``, ``eval/``: Lightning checkpoints, the final policy as a
  transformers directory, and evaluation samples and results.

``mrpo-compare`` reads only ``config.yaml``, ``summary.json`` and the metrics files. Kept
free of heavy imports: ``mrpo-compare`` reads records through it.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from mrpo.atomic import write_json

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
WANDB_ID_FILE = "wandb_run_id.txt"
FINISHED, FAILED = "finished", "failed"
"""The values of ``status`` in ``summary.json``."""

_VERSIONED_PACKAGES = (
    "mrpo",
    "torch",
    "lightning",
    "transformers",
    "datasets",
    "peft",
    "hydra-core",
    "wandb",
    "lm_eval",  # the optional evaluation backend (None when not installed)
)


def metrics_files(run_dir: str | Path) -> list[Path]:
    """The run's CSV metric files, oldest attempt first."""
    files = Path(run_dir).glob("csv/attempt_*/metrics.csv")
    return sorted(files, key=lambda p: int(p.parent.name.removeprefix("attempt_")))


def next_attempt(run_dir: str | Path) -> str:
    """The CSV folder name of the run's next attempt (``attempt_<n>``)."""
    return f"attempt_{len(metrics_files(run_dir))}"


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write a finished run's ``summary.json`` (``status: finished``)."""
    return write_json(Path(run_dir) / SUMMARY_FILE, {**summary, "status": FINISHED})


def write_failure(run_dir: str | Path, kind: str, message: str, trainer: Any = None) -> Path:
    """Record a run that ended in failure: ``summary.json`` with ``status: failed``.

    Args:
        run_dir: the run directory.
        kind: what failed (``config error``, ``non-finite loss``, ``crash``, ...).
        message: the failure's one-line message.
        trainer: the run's ``lightning.Trainer`` once built (None before): its optimizer steps
            and its last logged scalar metrics, kept as ``partial/<name>``.
    """
    metrics = {} if trainer is None else trainer.callback_metrics
    payload: dict[str, Any] = {
        "status": FAILED,
        "failure": {"kind": kind, "message": message},
        "global_step": None if trainer is None else trainer.global_step,
        "environment": environment_record(),
        **{f"partial/{k}": float(v) for k, v in metrics.items() if v.numel() == 1},
    }
    return write_json(Path(run_dir) / SUMMARY_FILE, payload)


def environment_record() -> dict[str, Any]:
    """Package versions, python, platform and the git commit, for reproducibility."""
    versions: dict[str, str | None] = {}
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
