"""``ThroughputMonitor``: speed, padding and peak memory of every training step, and totals.

Logged per training batch (this rank's figures under data parallelism):

- ``train/step_seconds``: wall time of the batch, from ``on_train_batch_start`` to
  ``on_train_batch_end`` (forward, backward and, on an optimizer step, the step itself;
  loading and collating the batch come before and are not counted);
- ``train/tokens_per_second``: real (non-padding) tokens through the policy per second; a token
  that a layout does not compute (a prompt shared by a pair) is not counted;
- ``train/pairs_per_second``: preference pairs per second;
- ``train/padding_fraction``: padding positions / all positions of the batch's rows;
- ``train/peak_memory_gb``: the process's peak resident memory on a CPU, the peak memory
  allocated by torch on a GPU (``torch.cuda.max_memory_allocated``).

``train/tokens_per_second`` is shown in the progress bar. :meth:`ThroughputMonitor.totals` sums
the run (written into ``summary.json`` as ``throughput``).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch

from mrpo.data.types import PreferenceBatch


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far in GB (2**30 bytes): torch's allocations on a CUDA device, else the
    process's peak resident set (``ru_maxrss``, kilobytes on Linux and bytes on macOS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


@dataclass
class ThroughputTotals:
    """A run's training work: sums over its batches, and the peak memory."""

    batches: int = 0
    tokens: int = 0
    positions: int = 0
    pairs: int = 0
    seconds: float = 0.0
    peak_memory_gb: float = 0.0

    def summary(self) -> dict[str, float]:
        """The totals and the rates they give (``summary.json``'s ``throughput``)."""
        seconds = max(self.seconds, 1e-9)
        return {
            **asdict(self),
            "tokens_per_second": self.tokens / seconds,
            "pairs_per_second": self.pairs / seconds,
            "padding_fraction": 1 - self.tokens / max(self.positions, 1),
        }


class ThroughputMonitor(L.Callback):
    """Logs the speed, padding and peak memory of each training batch (module doc)."""

    def __init__(self) -> None:
        self.totals = ThroughputTotals()
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        if not isinstance(batch, PreferenceBatch):
            return
        seconds = max(time.perf_counter() - self._start, 1e-9)
        tokens, positions = int(batch.attention_mask.sum()), batch.attention_mask.numel()
        peak = peak_memory_gb(pl_module.device)
        t = self.totals
        t.batches += 1
        t.tokens += tokens
        t.positions += positions
        t.pairs += batch.num_pairs
        t.seconds += seconds
        t.peak_memory_gb = max(t.peak_memory_gb, peak)
        values = {
            "train/step_seconds": seconds,
            "train/pairs_per_second": batch.num_pairs / seconds,
            "train/padding_fraction": 1 - tokens / max(positions, 1),
            "train/peak_memory_gb": peak,
        }
        pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=batch.num_pairs)
        pl_module.log(
            "train/tokens_per_second",
            tokens / seconds,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=batch.num_pairs,
        )


def throughput_summary(callbacks: list[L.Callback]) -> dict[str, float]:
    """The run's throughput totals (:class:`ThroughputMonitor`), or {}."""
    for callback in callbacks:
        if isinstance(callback, ThroughputMonitor):
            return callback.totals.summary()
    return {}
