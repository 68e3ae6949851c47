"""What ``mrpo-train`` prints: one hardware line, no advertisements, no library noise, and the
run's closing summary.

- Lightning's device lines (``GPU available ...``, ``TPU available ...``, ``HPU available ...``)
  come from every Trainer built, the pre-flight's throw-away ones included, and its
  ``💡 Tip`` lines advertise other products: :class:`LightningChatter` drops both from
  Lightning's rank-zero logger, and :func:`hardware_line` says once what the run has.
- Deprecation warnings that libraries raise about their own internals (a user cannot act on
  them) are ignored by category and by the module that raises them (:data:`LIBRARY_NOISE`);
  every other warning, and every error, still shows.
- bitsandbytes is imported by peft and transformers whenever it is installed, and warns about
  its kernels even in runs that quantize nothing: its warnings show only in a run that
  quantizes (:func:`quiet_bitsandbytes`).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch

# (category, module regex) of warnings about the libraries' own internals.
LIBRARY_NOISE: tuple[tuple[type[Warning], str], ...] = (
    # torch's LeafSpec deprecation, raised where Lightning's copy of tree_flatten builds one.
    (FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
)
_LIGHTNING_LOGGER = "lightning.pytorch.utilities.rank_zero"
_CHATTER = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:")


class LightningChatter(logging.Filter):
    """Drops Lightning's per-Trainer device lines and its tips (module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CHATTER)


def quiet_libraries() -> None:
    """Drop Lightning's chatter and the libraries' deprecation noise (module doc; idempotent)."""
    logger = logging.getLogger(_LIGHTNING_LOGGER)
    if not any(isinstance(f, LightningChatter) for f in logger.filters):
        logger.addFilter(LightningChatter())
    for category, module in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", category=category, module=module)


def quiet_bitsandbytes(quantizing: bool) -> None:
    """Silence bitsandbytes' warnings in a run that quantizes nothing (called once the config
    is known, before any model loads)."""
    if quantizing:
        return
    warnings.filterwarnings("ignore", module=r"bitsandbytes(\..*)?")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def hardware_line(cuda: bool) -> str:
    """One line: the device the run trains on, and what else the machine has."""
    cores = os.cpu_count() or 0
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and gpus:
        names = _gpu_names(gpus)
        return f"hardware: {names}, {cores} CPU cores; training on CUDA"
    extra = f"; {gpus} GPU(s) not used (trainer=gpu uses them)" if gpus else "; no GPU"
    return f"hardware: CPU, {cores} cores, {_ram_gb():.1f} GB RAM available{extra}"


def _gpu_names(count: int) -> str:
    props: Any = torch.cuda.get_device_properties(0)
    return f"{count} x {props.name} ({props.total_memory / 2**30:.1f} GB)"


def _ram_gb() -> float:
    import psutil  # type: ignore[import-untyped]  # no stubs installed

    return float(psutil.virtual_memory().available) / 2**30


def print_summary(summary: dict[str, Any]) -> None:
    """The run's closing lines: where it is, its data, throughput and scores before/after."""
    keys = ["val/rewards/accuracy", "val/rewards/margin", "val/policy_margin_accuracy"]
    if "final/test/policy_margin_accuracy" in summary:  # a run with a test split
        keys += ["test/rewards/accuracy", "test/policy_margin_accuracy"]
    data, speed = summary.get("data", {}), summary.get("throughput", {})
    lines = [
        "",
        f"run directory : {summary['run_dir']}",
        f"W&B run (sync): {summary['wandb_dir'] or 'disabled'}",
        f"data          : {data.get('train_pairs')} train + {data.get('val_pairs')} val pairs, "
        f"{data.get('truncated')} truncated",
        f"throughput    : {speed.get('tokens_per_second', float('nan')):.1f} tokens/s, "
        f"{speed.get('pairs_per_second', float('nan')):.2f} pairs/s, padding "
        f"{speed.get('padding_fraction', float('nan')):.1%}, peak memory "
        f"{speed.get('peak_memory_gb', float('nan')):.2f} GB",
        f"{'metric':<32}{'before':>10}{'after':>10}",
    ]
    for key in keys:
        before = summary.get(f"before/{key}", float("nan"))
        after = summary.get(f"final/{key}", float("nan"))
        lines.append(f"{key:<32}{before:>10.4f}{after:>10.4f}")
    print("\n".join(lines), flush=True)
