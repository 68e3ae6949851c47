"""Fault injection for reliability tests: real signals and real non-finite losses in a real run.

Both are Lightning callbacks, added to any ``mrpo-train`` run from the command line::

    mrpo-train ... +callbacks.extra.kill._target_=mrpo.testing.faults.KillAtStep \\
        +callbacks.extra.kill.step=3
    mrpo-train ... +callbacks.extra.nan._target_=mrpo.testing.faults.NanLossAtStep \\
        +callbacks.extra.nan.step=3

and :class:`RecordBatches` writes the data rows of every training batch, to check the order.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from mrpo.data.types import PreferenceBatch


class KillAtStep(Callback):
    """Kill the process with SIGKILL once ``step`` optimizer steps are done (no clean-up at all).

    Runs before the checkpoint callback of the same step (Lightning calls checkpoint callbacks
    last), so the newest checkpoint is the one saved before ``step``.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NanLossAtStep(Callback):
    """Make the training loss of the batch at global step ``step`` NaN (once).

    The batch's reference log-probs are overwritten with NaN before its training step, which
    makes every objective's loss NaN the way a numerical blow-up would. Needs cached references
    (the batch carries them); with live references it raises.
    """

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank  # only this global rank's batch (None: every rank's)
        self.fired = False  # a skipped batch does not advance global_step: poison one batch

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.fired or trainer.global_step != self.step:
            return
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        self.fired = True
        if not isinstance(batch, PreferenceBatch) or batch.ref_chosen is None:
            raise ValueError("NanLossAtStep needs cached reference log-probs in the batch")
        batch.ref_chosen.fill_(float("nan"))


class RecordBatches(Callback):
    """Append each training batch's data rows to a JSON-lines file (``{"step", "epoch",
    "rows"}``), to see the order a run trains in."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        import json

        if not isinstance(batch, PreferenceBatch) or not trainer.is_global_zero:
            return
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**row, "rows": batch.index.tolist()}) + "\n")
