"""The ``references`` group: the pool of reference models and which of them a run uses."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from mrpo.domains import Choice, Flag, Items, Number, Text, setting
from mrpo.references.spec import ReferenceSpec

__all__ = ["REF_MODES", "ReferencesConfig"]

REF_MODES = ("cached", "live")


@dataclass
class ReferencesConfig:
    """The reference ensemble: the first ``num_refs`` entries of ``pool`` (all when null)."""

    pool: list[ReferenceSpec] = setting(MISSING, Items(min_len=1))
    num_refs: int | None = setting(None, Number(int, ge=1, nullable=True))
    # Pool entries to use, by name and in this order, instead of the first num_refs.
    select: list[str] | None = setting(None, Items(Text(), min_len=1, nullable=True))
    mode: str = setting("cached", Choice(REF_MODES))
    batch_size: int = setting(8, Number(int, ge=1))
    # Ranks started together (torchrun, srun) each score 1/N of a missing cache entry's rows.
    split_across_ranks: bool = setting(True, Flag())
    shard_timeout_s: float = setting(7200.0, Number(float, gt=0))  # wait for the others' shards
    # How long a job waits for another job filling the same cache entry (null: forever).
    lock_timeout_s: float | None = setting(10800.0, Number(float, gt=0, nullable=True))
