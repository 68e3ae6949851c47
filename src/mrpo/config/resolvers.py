"""OmegaConf resolvers the packaged configs use (registered by ``register_configs``).

- ``${mrpo_unique:}``: six hex digits that make the default run and sweep directory names
  unique when two runs start in the same second (``outputs/<task>/<date>_<time>_<digits>``).
- ``${mrpo_each_reference:${references.pool}}``: the sweep values ``[a],[b],...`` that select
  each pool entry alone (``sweeps/each_reference.yaml``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any

from omegaconf import OmegaConf

UNIQUE_RESOLVER = "mrpo_unique"
EACH_REFERENCE_RESOLVER = "mrpo_each_reference"


def unique_suffix() -> str:
    """Six hex digits, the same for every process of one launch.

    Ranks started together by torchrun or SLURM derive them from their launch's id
    (``TORCHELASTIC_RUN_ID``, ``SLURM_JOB_ID`` and step), so they agree on their directory; any
    other process draws them at random (Lightning's own DDP launcher passes the resolved
    directory to the processes it starts).
    """
    launch = [os.environ.get(k) for k in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID")]
    if any(v and v != "none" for v in launch):
        return hashlib.sha256("/".join(str(v) for v in launch).encode()).hexdigest()[:6]
    return secrets.token_hex(3)


def each_reference(pool: Any) -> str:
    """``[name_1],[name_2],...``: a sweep over ``references.select`` with one pool entry per job."""
    return ",".join(f"[{entry['name']}]" for entry in pool)


def register_resolvers() -> None:
    """Register the resolvers (idempotent). Cached: one value per config."""
    if not OmegaConf.has_resolver(UNIQUE_RESOLVER):
        OmegaConf.register_new_resolver(UNIQUE_RESOLVER, unique_suffix, use_cache=True)
    if not OmegaConf.has_resolver(EACH_REFERENCE_RESOLVER):
        OmegaConf.register_new_resolver(EACH_REFERENCE_RESOLVER, each_reference)
