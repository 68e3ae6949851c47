"""A run directory belongs to one run: claimed at the start, resumed only by its own settings.

- :func:`claim_run_dir` refuses a directory in which a run has trained or ended unless the run
  resumes it (``ckpt_path``), so a rerun never overwrites the metrics, ``summary.json``, the
  checkpoints or the final model of an earlier run.
- :func:`run_identity` is what a checkpoint must share with the run that resumes it: every
  config value that changes the numbers of the training (not the paths, the loggers, the length
  of the run, the evaluation or extra callbacks) and the fingerprints of the data the policy saw.
  :func:`identity_differences` lists the keys that differ, for the message that refuses the
  resume (``force_resume=true`` overrides it).
The default directory names are unique even for runs started in the same second
(:func:`mrpo.config.resolvers.unique_suffix`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mrpo.errors import ConfigError, OptionError
from mrpo.tracking.record import SUMMARY_FILE

RUN_MARKERS = (SUMMARY_FILE, "checkpoints", "csv", "model")
"""Entries of a run directory that mean a run has trained (or ended) there. ``config.yaml``
alone is not one: a run stopped by a bad input before training leaves nothing to lose, so the
corrected command may start in the same directory."""

# Config keys that a resumed run may change: where things go, what is logged, how long the run
# is, evaluation and extra callbacks, and the reference scoring's batching (same numbers).
_MAY_DIFFER_KEYS = frozenset(
    {
        "ckpt_path",
        "force_resume",
        "stage",
        "save_model",
        "task_name",
        "trainer.max_epochs",
        "trainer.max_steps",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
        "trainer.log_every_n_steps",
        "references.batch_size",
        "references.shard_timeout_s",
        "references.split_across_ranks",
        "references.lock_timeout_s",
        "data.num_workers",
        "data.eval_batch_size",
    }
)
_MAY_DIFFER_PREFIXES = ("paths.", "logger.", "eval.", "callbacks.", "hydra.")


def is_launch_leader() -> bool:
    """Whether this process is the first of its launch (global rank 0, or not distributed)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value not in (None, "", "0"):
            return False
    return True


def started_run(output_dir: Path) -> list[str]:
    """The :data:`RUN_MARKERS` present in ``output_dir`` (empty for a fresh directory)."""
    return [name for name in RUN_MARKERS if (output_dir / name).exists()]


def claim_run_dir(output_dir: Path, *, resuming: bool) -> None:
    """Refuse ``output_dir`` when it holds another run and this run does not resume it.

    Only the first process of a launch checks: the others of the same launch find the files it
    has just written.

    Raises:
        ConfigError: (``hydra.run.dir``) naming what the directory already holds.
    """
    if resuming or not is_launch_leader():
        return
    found = started_run(output_dir)
    if found:
        raise ConfigError(
            "hydra.run.dir",
            f"{output_dir} already holds a run ({', '.join(found)}); resume it with "
            "ckpt_path=last, or start in a new directory (leave hydra.run.dir at its default "
            "or name another one)",
        )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_identity(
    resolved: Mapping[str, Any], data_fingerprints: Mapping[str, str], world_size: int = 1
) -> dict[str, Any]:
    """What a checkpoint records of its run, for :func:`identity_differences`.

    Args:
        resolved: the run's fully resolved config (plain containers).
        data_fingerprints: ``train_fingerprint`` and ``val_fingerprint`` of the policy's data.
        world_size: data-parallel processes (they split the batches: another count trains on
            other batches).
    """
    flat = {
        key: value
        for key, value in flatten(resolved).items()
        if key not in _MAY_DIFFER_KEYS and not key.startswith(_MAY_DIFFER_PREFIXES)
    }
    return {
        "config": flat,
        "data": dict(data_fingerprints),
        "world_size": world_size,
    }


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key (saved -> now)`` for every key whose value differs, data and world size included."""
    differences = []
    saved_config, now_config = saved.get("config", {}), current.get("config", {})
    for key in sorted(set(saved_config) | set(now_config)):
        before, after = saved_config.get(key, "<unset>"), now_config.get(key, "<unset>")
        if before != after:
            differences.append(f"{key} ({before!r} -> {after!r})")
    for key in sorted(set(saved.get("data", {})) | set(current.get("data", {}))):
        if saved.get("data", {}).get(key) != current.get("data", {}).get(key):
            differences.append(f"data {key.removesuffix('_fingerprint')} rows (other token ids)")
    if saved.get("world_size", 1) != current.get("world_size", 1):
        differences.append(
            f"number of processes ({saved.get('world_size')} -> {current.get('world_size')})"
        )
    return differences


def check_resume(
    saved: Mapping[str, Any] | None, current: Mapping[str, Any], ckpt_path: str | None, force: bool
) -> list[str]:
    """A resumed run's identity against the one its checkpoint saved (None: it saved none):
    an :class:`OptionError` naming ``ckpt_path`` where they differ, unless ``force``; returns
    what to warn about."""
    differences = [] if saved is None else identity_differences(saved, current)
    if differences and not force:
        raise OptionError(
            "ckpt_path",
            f"{ckpt_path} was saved by a run with other settings or data: "
            f"{'; '.join(differences)}. Resume with the checkpoint's settings, or pass "
            "force_resume=true to resume anyway",
        )
    if not differences:
        return []
    return [f"resuming despite differences (force_resume): {'; '.join(differences)}"]
