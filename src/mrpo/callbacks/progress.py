"""``RunProgressBar``: Lightning's tqdm bar showing the step's figures under short names.

Lightning's bar shows every metric logged with ``prog_bar=True`` under its full name, plus a
``v_num``; on an 80-column terminal tqdm then cuts the line inside a name. This bar shows
the training loss, tokens per second and the step's seconds (and the validation loss while
validating), with names short enough that the line fits.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

SHOWN = {
    "train/loss": "loss",
    "train/tokens_per_second": "tok/s",
    "train/step_seconds": "s/step",
    "val/loss": "val_loss",
}
"""Logged metric -> its name in the bar, in the bar's order."""


def progress_figures(metrics: dict[str, Any]) -> dict[str, str]:
    """The bar's figures from the latest logged metrics (3 significant digits)."""
    shown = {}
    for key, name in SHOWN.items():
        if key in metrics:
            value = float(metrics[key])
            shown[name] = f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return shown


class RunProgressBar(TQDMProgressBar):
    """The progress bar of ``mrpo-train`` (module doc)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return progress_figures(dict(trainer.callback_metrics))
