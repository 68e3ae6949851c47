"""Cached mode: each reference scores a list of rows once into the
:class:`~mrpo.references.cache.RefCache` (split across ranks where there are several) and
every later call reads them back; ``ReferenceEnsemble.precompute`` and ``.table`` call these."""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from mrpo.data.tokenize import TokenizedPairs
from mrpo.data.types import PreferenceExample
from mrpo.errors import InputError
from mrpo.references.cache_entry import RefCacheKey
from mrpo.references.logps import RefLogps
from mrpo.references.sharding import ShardStore, wait_for_entry
from mrpo.references.table import RefTable

if TYPE_CHECKING:  # the ensemble calls into this module; it is only a parameter type here
    from mrpo.references.ensemble import ReferenceEnsemble

log = logging.getLogger("mrpo.references")


@dataclass
class ReferenceStats:
    """Counters of reference work (one ``precompute`` call, or an ensemble's lifetime).

    Attributes:
        hits: references read from the cache.
        misses: references computed (and stored).
        model_loads: reference models loaded.
        forward_passes: model forward calls made to score rows.
        seconds: wall-clock time spent in ``precompute``.
    """

    hits: int = 0
    misses: int = 0
    model_loads: int = 0
    forward_passes: int = 0
    seconds: float = 0.0

    def minus(self, other: ReferenceStats) -> ReferenceStats:
        """The counters accumulated since the snapshot ``other``."""
        return ReferenceStats(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )


@dataclass
class Precomputed:
    """Result of :func:`precompute`.

    Attributes:
        logps: one :class:`RefLogps` per reference, in spec order.
        stats: the work this call did.
    """

    logps: list[RefLogps]
    stats: ReferenceStats = field(default_factory=ReferenceStats)


def check_distinct_indices(examples: Sequence[PreferenceExample]) -> None:
    """Raise ValueError naming repeated row indices (cached rows are keyed by index)."""
    counts = Counter(ex.index for ex in examples)
    repeated = sorted(index for index, n in counts.items() if n > 1)
    if repeated:
        raise ValueError(
            f"preference rows must have distinct indices to be cached; repeated: {repeated[:5]}"
        )


class ReferenceScoreError(InputError):
    """A reference model gives log-probs that cannot be used (NaN or infinite)."""

    kind = "model error"


def check_finite(scores: RefLogps, who: str) -> None:
    """Refuse non-finite scores before they are cached (a cache entry is kept for good).

    Raises:
        ReferenceScoreError: naming ``who`` and the first data set rows concerned.
    """
    bad = ~(torch.isfinite(scores.chosen) & torch.isfinite(scores.rejected))
    for column in (scores.chosen_shared, scores.rejected_shared):
        if column is not None:
            bad |= ~torch.isfinite(column)
    if bool(bad.any()):
        rows = scores.index[bad].tolist()
        first = int(bad.nonzero()[0, 0])
        raise ReferenceScoreError(
            f"{who} gives non-finite log-probs on {len(rows)} row(s), data set rows "
            f"{rows[:10]}{' ...' if len(rows) > 10 else ''} (row {rows[0]}: chosen "
            f"{float(scores.chosen[first])}, rejected {float(scores.rejected[first])}); nothing "
            "was cached. Check the reference's weights and dtype (float16 overflows; use "
            "bfloat16 or float32)"
        )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def precompute(
    ensemble: ReferenceEnsemble, examples: Sequence[PreferenceExample], *, progress: bool = True
) -> Precomputed:
    """Each reference's log-probs on ``examples``: from the cache, or computed and stored.

    A model is loaded only for references missing from the cache, once for all the
    references that share it (e.g. ``self`` and its prompted variants), and freed before
    the next one is loaded. Each reference logs ``cache hit`` or ``computed N rows``.

    Args:
        ensemble: the references, their cache and this process's rank.
        examples: the rows (distinct ``index`` values).
        progress: show a progress bar while scoring.

    Returns:
        :class:`Precomputed` with K :class:`RefLogps` (rows sorted by index) and counters.
    """
    check_distinct_indices(examples)
    start, before = time.perf_counter(), replace(ensemble.stats)
    memo: dict[Any, TokenizedPairs] = {}
    # Every reference's tokenizer and rows first: an unusable tokenizer or chat template
    # fails here, before any model is loaded or any reference is scored.
    tokenized = [ensemble.tokenize(k, examples, memo, keep=True) for k in range(len(ensemble))]
    results: list[RefLogps] = [None] * len(ensemble)  # type: ignore[list-item]
    for members in ensemble.model_groups().values():
        loaded: list[torch.nn.Module] = []  # filled by the group's first miss
        for k in members:
            results[k] = _get_or_compute(ensemble, k, tokenized[k], loaded, progress)
        if loaded:  # drop the group's model before the next group loads its own
            loaded.clear()
            _free_memory()
    ensemble.stats.seconds += time.perf_counter() - start
    return Precomputed(results, ensemble.stats.minus(before))


def _get_or_compute(
    ensemble: ReferenceEnsemble,
    k: int,
    pairs: TokenizedPairs,
    loaded: list[torch.nn.Module],
    progress: bool,
) -> RefLogps:
    name, key, t0 = ensemble.specs[k].name, ensemble.key(k, pairs.pairs), time.perf_counter()
    meta = {"reference": name, "source": ensemble.resolved[k].weights, "rows": len(pairs.pairs)}
    compute = partial(_compute, ensemble, k, loaded=loaded, progress=progress)
    if ensemble.ranks.world_size > 1:
        value, hit = _get_or_compute_shard(ensemble, k, key, pairs, compute, meta)
    else:
        value, hit = ensemble.cache.get_or_compute(key, partial(compute, pairs), meta)
    if hit:
        ensemble.stats.hits += 1
        log.info("reference %s: cache hit (%d rows, key %s)", name, len(value), key.digest[:12])
    else:
        ensemble.stats.misses += 1
        dt = time.perf_counter() - t0
        log.info("reference %s: computed %d rows in %.1f s", name, len(value), dt)
    return value


def _get_or_compute_shard(
    ensemble: ReferenceEnsemble,
    k: int,
    key: RefCacheKey,
    pairs: TokenizedPairs,
    compute: Callable[[TokenizedPairs], RefLogps],
    meta: dict[str, Any],
) -> tuple[RefLogps, bool]:
    """Score this rank's share of a missing entry, then wait for (or join) the others'.

    Returns ``(entry, hit)``; ``hit`` is False when this rank scored rows for it.
    """
    value = ensemble.cache.get(key)
    if value is not None:
        return value, True
    rank, world = ensemble.ranks.rank, ensemble.ranks.world_size
    store = ShardStore(ensemble.cache, key, world)
    scored = store.read(rank) is None  # a shard left by an earlier run is reused
    if scored:
        # Rows are dealt out in row-index order: the same rank scores the same rows
        # whatever order the examples came in (another split seed, another run).
        ordered = sorted(pairs.pairs, key=lambda p: p.index)
        mine = replace(pairs, pairs=ordered[rank::world])
        store.write(rank, compute(mine))
        name = ensemble.specs[k].name
        log.info("reference %s: rank %d of %d scored %d rows", name, rank, world, len(mine.pairs))
    value, _ = wait_for_entry(store, timeout=ensemble.shard_timeout, meta=meta)
    return value, not scored


def _compute(
    ensemble: ReferenceEnsemble,
    k: int,
    pairs: TokenizedPairs,
    *,
    loaded: list[torch.nn.Module],
    progress: bool,
) -> RefLogps:
    if not pairs.pairs:  # nothing to score: no reason to load a model
        return RefLogps.empty(shared=ensemble.pair_shared)
    if not loaded:
        loaded.append(ensemble.load_model(k))
    # Stored sorted by row index, whatever the input order.
    scores = ensemble.score(k, loaded[0], pairs, progress=progress).sorted()
    who = f"reference {k} ({ensemble.specs[k].name!r}, {ensemble.resolved[k].weights})"
    check_finite(scores, who)
    return scores


def table(
    ensemble: ReferenceEnsemble, examples: Sequence[PreferenceExample], *, progress: bool = True
) -> RefTable:
    """A :class:`RefTable` over ``examples`` (precomputing what the cache lacks)."""
    pre = precompute(ensemble, examples, progress=progress)
    return RefTable.from_logps(
        pre.logps,
        length_normalize=[s.length_normalize for s in ensemble.specs],
        names=ensemble.names,
        ld_alpha=ensemble.ld_alpha,
    )
