"""Which W&B mode a run or ``mrpo-compare --wandb`` gets: kept free of heavy imports.

``auto`` is online when an API key is configured (``WANDB_API_KEY`` or ``~/.netrc``) and
offline otherwise; ``WANDB_MODE`` in the environment wins over the config.
"""

from __future__ import annotations

import os
from pathlib import Path

WANDB_MODES = ("auto", "online", "offline", "disabled")


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
