"""Reference scoring split across data-parallel ranks that start together.

When an external launcher (``torchrun``, or ``srun``/submitit on SLURM) starts all N ranks of
a run at once, every rank needs the same reference log-probs. Rather than one rank scoring
every row while the others wait on the cache entry's lock, rank r scores rows r, r + N,
r + 2N, ... and writes them as a *shard* beside the cache; the first rank to see all N shards
joins them into the cache entry (under the entry's lock, so exactly one writes it) and the
others read the entry. Each rank thus does 1/N of the forward passes.

Shards are named by the entry's key digest and the world size, and verified like entries
(:func:`mrpo.references.cache_entry.decode_entry`): a shard left by a run that stopped part-way is
valid for a later run with the same key and world size, which then scores only what is missing.

Lightning's own launcher (``trainer=ddp`` started as one ``mrpo-train`` command) starts the
other ranks only when training begins, after rank 0 has filled the cache alone; they find it
filled. Splitting the scoring needs the ranks started together (``docs/scaling.md``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mrpo.atomic import atomic_write
from mrpo.errors import InputError
from mrpo.references.cache import RefCache
from mrpo.references.cache_entry import CacheFileError, RefCacheKey, encode_entry, read_entry
from mrpo.references.logps import RefLogps


@dataclass(frozen=True)
class RankInfo:
    """This process's place among the data-parallel ranks of a run.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of ranks.
        local_rank: rank on this node (the GPU index it uses).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")


def detect_ranks() -> RankInfo:
    """The ranks an external launcher started (torchrun, SLURM ``srun``); one rank otherwise.

    Uses Lightning's own detection, so the ranks are the ones the ``Trainer`` will use.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for env_type in (TorchElasticEnvironment, SLURMEnvironment):
        if env_type.detect():
            env = env_type()
            return RankInfo(env.global_rank(), env.world_size(), env.local_rank())
    return RankInfo()


class ShardTimeoutError(InputError):
    """Other ranks' shards did not appear in time (a rank stopped, or another world size)."""

    kind = "cache error"


class ShardStore:
    """The N shards of one cache entry, in ``<cache root>/shards/<digest>-of-<N>/``.

    Args:
        cache: the reference cache the joined entry goes to.
        key: the entry's key.
        world_size: number of ranks (shards).
    """

    def __init__(self, cache: RefCache, key: RefCacheKey, world_size: int) -> None:
        self.cache = cache
        self.key = key
        self.world_size = world_size
        self.dir = cache.root / "shards" / f"{key.digest}-of-{world_size}"

    def path(self, rank: int) -> Path:
        """The file of ``rank``'s shard."""
        return self.dir / f"rank-{rank}.safetensors"

    def write(self, rank: int, value: RefLogps) -> None:
        """Store ``rank``'s shard atomically (readers never see a partial file)."""
        meta = {"shard": rank, "world_size": self.world_size}
        atomic_write(self.path(rank), encode_entry(self.key, value, meta))

    def read(self, rank: int) -> RefLogps | None:
        """``rank``'s shard, or None when it is absent or damaged (then it is scored again)."""
        return read_entry(self.path(rank), self.key)

    def missing(self) -> list[int]:
        """Ranks whose shard file does not exist yet."""
        return [r for r in range(self.world_size) if not self.path(r).exists()]

    def join(self) -> RefLogps:
        """All shards as one entry, rows sorted by index.

        Raises:
            CacheFileError: a shard is damaged (its rank must score it again).
        """
        shards = []
        for rank in range(self.world_size):
            shard = self.read(rank)
            if shard is None:
                raise CacheFileError(f"shard {self.path(rank)} is missing or damaged")
            shards.append(shard)
        index = torch.cat([s.index for s in shards])
        order = torch.argsort(index)
        columns = {
            name: torch.cat([getattr(s, name) for s in shards])[order] for name in self.key.columns
        }
        return RefLogps(**columns)

    def remove(self) -> None:
        """Delete the shards (once the joined entry is in the cache)."""
        for rank in range(self.world_size):
            self.path(rank).unlink(missing_ok=True)
        # A temp file of a writer that died, or a directory already gone: harmless.
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def wait_for_entry(
    store: ShardStore,
    *,
    timeout: float,
    meta: Mapping[str, Any] | None = None,
    poll: float = 0.5,
) -> tuple[RefLogps, bool]:
    """Wait until the entry is in the cache or all shards exist; return the entry.

    The first rank to find every shard joins them into the cache (under the entry's lock, with
    ``meta`` as the entry's metadata) and deletes the shards; a rank arriving later reads it.

    Returns:
        ``(entry, joined)``: ``joined`` is True for the rank that wrote the entry.

    Raises:
        ShardTimeoutError: after ``timeout`` seconds, naming the ranks whose shards are missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = store.cache.get(store.key)
        if value is not None:
            return value, False
        if not store.missing():
            value, hit = store.cache.get_or_compute(store.key, store.join, meta)
            if not hit:
                store.remove()
            return value, not hit
        if time.monotonic() > deadline:
            raise ShardTimeoutError(
                f"waited {timeout:g} s for the reference shards of ranks {store.missing()} "
                f"in {store.dir}: every rank of the run must score its share (is one stopped, or "
                "started with another world size?); shards already written are kept and reused "
                "by the next run with the same references and data"
            )
        time.sleep(poll)
