"""Checkpoints that a killed run cannot damage, and that a resume finds.

- :class:`AtomicCheckpointIO` writes every Lightning checkpoint through
  :func:`mrpo.atomic.atomic_writer`: a temporary file *beside* the target, fsync, rename.
  (Lightning's own writer buffers the whole checkpoint in memory and moves a temporary file
  from ``$TMPDIR``, which on another file system, such as a tmpfs or a cluster's scratch disk,
  is a copy that a kill can cut short.)
- :class:`LastCheckpoint` writes ``last.ckpt`` every ``every_n_train_steps`` steps, at the step
  that reaches ``max_steps``, and at the end of every training epoch that ran all its batches,
  whatever the metrics (Lightning's ``ModelCheckpoint(save_top_k=0,
  save_last=True)`` writes ``last`` only together with a top-k save, so a run that keeps no
  best checkpoint would have no ``last.ckpt`` at an epoch boundary).
- Best checkpoints are named ``best-step_<n>.ckpt`` (no ``=``, so a path can be passed on the
  command line as it is); :func:`last_checkpoints`, :func:`best_checkpoints` and
  :func:`best_model_path` find them for ``ckpt_path=last`` and ``ckpt_path=best``.
- :func:`resolve_ckpt_path` turns ``ckpt_path`` into the file to resume from, checked without
  running code; :func:`read_checkpoint_identity` reads the run identity it recorded.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mrpo.atomic import atomic_writer
from mrpo.errors import OptionError

LAST_NAME = "last"
BEST_PREFIX = "best-step_"
BEST_FILENAME = BEST_PREFIX + "{step}"
"""``ModelCheckpoint(filename=..., auto_insert_metric_name=False)`` of the best checkpoints."""
SUFFIX = ".ckpt"
CHECKPOINT_DIR = "checkpoints"
SHARDED_META = "meta.pt"
"""The file of a sharded checkpoint folder that holds everything but the tensors (Lightning's
``ModelParallelStrategy`` writes the shards beside it, through torch.distributed.checkpoint)."""
RUN_IDENTITY_KEY = "mrpo_run_identity"
"""Where a checkpoint keeps :attr:`mrpo.training.module.PreferenceModule.run_identity`."""


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a sharded checkpoint folder (FSDP's ``state_dict_type: sharded``)."""
    return (Path(path) / SHARDED_META).is_file()


def _is_checkpoint(path: Path) -> bool:
    return path.is_file() or is_sharded_checkpoint(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O, saving local files atomically beside the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            # Remote file systems keep Lightning's own (object-store aware) writer.
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_writer(path) as f:
            torch.save(checkpoint, f)


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt``: every ``every_n_train_steps`` optimizer steps (when set),
    at the step that reaches ``max_steps``, and at the end of every training epoch that ran
    all its batches (after its validation), on global rank 0.

    It is a :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs it after the
    other callbacks of a hook: the state it saves includes theirs.
    """

    def __init__(self, dirpath: str | os.PathLike[str], every_n_train_steps: int | None = None):
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1 or None, got {every_n_train_steps}")
        self.path = Path(dirpath) / f"{LAST_NAME}{SUFFIX}"
        self.every_n_train_steps = every_n_train_steps
        self._saved_at: int | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        every = self.every_n_train_steps
        step = trainer.global_step
        due = every is not None and step % every == 0
        # The step that reaches trainer.max_steps ends the run, usually mid-epoch: saved here,
        # the checkpoint resumes the rest of that epoch (see on_train_epoch_end).
        last_step = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        # With gradient accumulation this hook runs on every micro-batch: save once per step.
        if (due or last_step) and step > 0 and step != self._saved_at:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A checkpoint written here resumes with the *next* epoch. When the epoch was cut short
        # (max_steps, max_time, a stop request) the batches it did not reach would be lost:
        # last.ckpt stays the latest one written after a batch, which resumes mid-epoch.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
        if done < trainer.num_training_batches:
            return
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking:
            return
        # The whole training state (weights_only=False said, so Lightning need not say it).
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at = trainer.global_step


def last_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """A run directory's ``last*.ckpt`` files (or sharded folders), newest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    files = [p for p in folder.glob(f"{LAST_NAME}*{SUFFIX}") if _is_checkpoint(p)]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def best_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """A run directory's ``best-step_<n>.ckpt`` files (or sharded folders), highest step first."""
    folder = Path(output_dir) / CHECKPOINT_DIR

    def step(path: Path) -> int:
        tail = path.stem.removeprefix(BEST_PREFIX)
        return int(tail) if tail.isdigit() else -1

    found = [p for p in folder.glob(f"{BEST_PREFIX}*{SUFFIX}") if _is_checkpoint(p)]
    return sorted(found, key=step, reverse=True)


def best_model_path(checkpoint: dict[str, Any]) -> str | None:
    """The best checkpoint a ``ModelCheckpoint`` recorded in a loaded checkpoint's state."""
    for name, state in (checkpoint.get("callbacks") or {}).items():
        if str(name).startswith("ModelCheckpoint") and isinstance(state, dict):
            best = state.get("best_model_path")
            if best:
                return str(best)
    return None


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` / ``best`` as files of ``output_dir``, or a checked local file.

    Raises:
        OptionError: (``ckpt_path``) remote, missing, a folder, or nothing to resume.
    """
    if ckpt_path is None:
        return None
    if "://" in ckpt_path:
        raise OptionError(
            "ckpt_path",
            f"{ckpt_path!r} is remote; a checkpoint is loaded with pickle, which runs code, so "
            "mrpo loads local files only: download it and pass its path",
        )
    if ckpt_path == "last":
        candidates = last_checkpoints(output_dir)
        if not candidates:
            raise OptionError(
                "ckpt_path",
                f"'last' but {output_dir / 'checkpoints'} holds no last.ckpt; start without it",
            )
        return str(candidates[0])
    if ckpt_path == "best":
        bests = best_checkpoints(output_dir)
        if not bests:
            raise OptionError("ckpt_path", f"'best' but {output_dir} holds no best-step_*.ckpt")
        recorded = best_model_path(load_checkpoint(str(bests[0])))
        chosen = Path(recorded) if recorded and Path(recorded).is_file() else bests[0]
        return str(chosen)
    path = Path(ckpt_path).expanduser()
    if path.is_dir() and not is_sharded_checkpoint(path):
        raise OptionError(
            "ckpt_path",
            f"{path} is a folder; pass its .ckpt file, or ckpt_path=last with "
            "hydra.run.dir=<the run's directory>",
        )
    if not path.exists():
        raise OptionError("ckpt_path", f"{path} does not exist")
    return str(path)


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint's contents, memory-mapped (tensors are not read) and without running code;
    of a sharded checkpoint folder, everything but its tensors (which stay in the shards)."""
    sharded = is_sharded_checkpoint(path)
    try:
        file = Path(path) / SHARDED_META if sharded else path
        loaded = torch.load(file, map_location="cpu", mmap=not sharded, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise OptionError(
            "ckpt_path", f"{path} cannot be read as a checkpoint (truncated or damaged?): {err}"
        ) from None
    if not isinstance(loaded, dict) or ("state_dict" not in loaded and not sharded):
        raise OptionError("ckpt_path", f"{path} is not a Lightning checkpoint (no state_dict)")
    return loaded


def read_checkpoint_identity(path: str) -> dict[str, Any] | None:
    """The run identity a checkpoint recorded (None for one written without it)."""
    identity = load_checkpoint(path).get(RUN_IDENTITY_KEY)
    return dict(identity) if isinstance(identity, Mapping) and identity else None
