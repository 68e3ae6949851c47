"""Training speed measured by earlier runs on this machine, kept in the cache folder, and the
time estimate a new run's plan takes from it.

``<paths.cache_dir>/throughput.json`` maps a speed key (the device, the policy source and the
settings that change a step's cost) to the tokens per second the last finished run with that
key measured (``summary.json``'s ``throughput.tokens_per_second``). A run with no earlier
measurement says its time is unknown rather than guessing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mrpo.atomic import write_json

SPEED_FILE = "throughput.json"
# A reference scores a batch in a forward pass with no gradients: about a third of a training
# step's forward, backward and update on the same tokens (the backward costs twice the forward).
SCORING_SPEEDUP = 3.0


def speed_key(device: str, source: str, settings: Mapping[str, Any]) -> str:
    """The key of a measured speed: where it ran, what it trained, the settings of its step."""
    return "|".join([device, source, *(f"{k}={v}" for k, v in sorted(settings.items()))])


def read_speed(cache_dir: str | Path, key: str) -> float | None:
    """Tokens per second measured by an earlier run with ``key``, or None."""
    path = Path(cache_dir) / SPEED_FILE
    try:
        value = json.loads(path.read_text()).get(key, {}).get("tokens_per_second")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def record_speed(cache_dir: str | Path, key: str, tokens_per_second: float) -> None:
    """Keep a finished run's training speed for the plans of later runs."""
    if not (tokens_per_second > 0 and math.isfinite(tokens_per_second)):
        return
    path = Path(cache_dir) / SPEED_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    known[key] = {"tokens_per_second": tokens_per_second}
    write_json(path, known)


def estimate_seconds(train_tokens: int, uncached_tokens: int, tokens_per_second: float) -> float:
    """Training ``train_tokens`` plus scoring ``uncached_tokens`` with the references that
    miss the cache, at a measured training speed."""
    return (train_tokens + uncached_tokens / SCORING_SPEEDUP) / tokens_per_second


def format_duration(seconds: float | None) -> str:
    """``~4 min``, ``~35 s``, ``~1.5 h``; ``unknown`` without an estimate."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"
