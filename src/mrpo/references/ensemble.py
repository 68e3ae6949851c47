"""``ReferenceEnsemble``: K references, tokenized their own way, scored once into the cache."""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mrpo.data.layout import PADDED, PairLayout
from mrpo.data.prepare import prepare_pairs, tokenizer_fingerprint
from mrpo.data.tokenize import TokenizedPairs, pair_token_lengths
from mrpo.data.types import PreferenceExample, TokenizedPair
from mrpo.errors import InputError
from mrpo.logprobs import ld_active
from mrpo.models import ModelSourceError, load_model, load_tokenizer, model_fingerprint
from mrpo.models.quantization import precision_label
from mrpo.references.cache import RefCache, RefCacheKey, canonical_json, numerics_label
from mrpo.references.logps import RefLogps
from mrpo.references.scoring import data_fingerprint, num_forward_passes, score_pairs
from mrpo.references.sharding import RankInfo, ShardStore, wait_for_entry
from mrpo.references.spec import ReferenceSpec, resolve_reference
from mrpo.references.table import RefTable

log = logging.getLogger("mrpo.references")

TRUNCATION = "prompt-keep-end,response-keep-start"
"""Name of the truncation rule of :mod:`mrpo.data.tokenize`; a part of every cache key."""


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
    """Result of :meth:`ReferenceEnsemble.precompute`.

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


class ReferenceEnsemble:
    """K reference models with a shared on-disk log-prob cache.

    Args:
        specs: the K references, the primary one first.
        policy_source: the policy's model source; needed when a spec's source is ``self``.
        policy_tokenizer: the policy's tokenizer source (default ``policy_source``).
        policy_chat_template: the policy's chat template override, if any.
        max_length: most tokens of prompt + response (see :mod:`mrpo.data.tokenize`).
        max_prompt_length: prompt length a too-long pair's prompt is cut to.
        cache_dir: directory of the reference log-prob cache.
        batch_size: pairs per forward pass when scoring.
        model_cache_dir: directory of converted GGUF models (see :mod:`mrpo.models`).
        device: where reference models run (default: this rank's GPU if CUDA is available,
            else CPU).
        ranks: this process's data-parallel rank; with more than one rank, each scores its
            share of a missing entry's rows (:mod:`mrpo.references.sharding`).
        shard_timeout: seconds a rank waits for the other ranks' shards.
        lock_timeout: seconds a process waits for another one filling the same cache entry
            (None: as long as it takes; see :class:`~mrpo.references.cache.RefCache`).
        layout: how the pairs of a scoring batch become rows (:mod:`mrpo.data.layout`); the
            log-probs are the same in every layout, to float rounding.
        tokenized_cache_dir: where the rows tokenized for the cache are kept and reused
            (:func:`mrpo.data.prepare.prepare_pairs`); None: tokenized every time.
        num_proc: processes that tokenize the rows (None: as many as pay).
        fused_head: score through the fused LM head where a model allows it (False: from
            full logits, as ``model.fused_lm_head=false`` asks of the whole run).
        ld_alpha: LD-DPO's α (``loss.ld_alpha``); when it changes the log-probs, every
            reference also sums each response up to its pair's shared length (in its own
            tokens), the cache stores those sums as two more columns (another key), and
            :meth:`values` combines them.

    Raises:
        ValueError: no specs, an unusable spec (:class:`~mrpo.errors.OptionError`), repeated
            names, ``self`` without ``policy_source``, or a batch size below 1.
    """

    def __init__(
        self,
        specs: Sequence[ReferenceSpec],
        *,
        policy_source: str | None = None,
        policy_tokenizer: str | None = None,
        policy_chat_template: str | None = None,
        max_length: int,
        max_prompt_length: int | None = None,
        cache_dir: str | Path,
        batch_size: int = 8,
        model_cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        ranks: RankInfo | None = None,
        shard_timeout: float = 7200.0,
        lock_timeout: float | None = None,
        layout: PairLayout = PADDED,
        tokenized_cache_dir: str | Path | None = None,
        num_proc: int | None = None,
        fused_head: bool = True,
        ld_alpha: float | None = None,
    ) -> None:
        if not specs:
            raise ValueError("a reference ensemble needs at least one reference")
        for spec in specs:
            spec.check()
        names = [s.name for s in specs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"reference names must be unique; repeated: {repeated}")
        if batch_size < 1:
            raise ValueError(f"references batch_size must be >= 1, got {batch_size}")
        self.specs = tuple(specs)
        self.resolved = tuple(
            resolve_reference(
                s,
                policy_source=policy_source,
                policy_tokenizer=policy_tokenizer,
                policy_chat_template=policy_chat_template,
            )
            for s in specs
        )
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.cache = RefCache(cache_dir, lock_timeout=lock_timeout)
        self.batch_size = batch_size
        self.model_cache_dir = model_cache_dir
        self.ranks = ranks or RankInfo()
        self.shard_timeout = shard_timeout
        self.layout = layout
        self.tokenized_cache_dir = tokenized_cache_dir
        self.num_proc = num_proc
        self.fused_head = fused_head
        self.ld_alpha = ld_alpha
        self.pair_shared = ld_active(ld_alpha)
        if device is None:
            device = f"cuda:{self.ranks.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.stats = ReferenceStats()
        self._tokenizers: dict[tuple[str, str | None], Any] = {}
        self._fingerprints: dict[tuple[str, Any], str] = {}

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        """The K reference names, in order."""
        return tuple(s.name for s in self.specs)

    def model_groups(self) -> dict[tuple[str, str], list[int]]:
        """Reference positions grouped by loaded model (same weights source and dtype)."""
        groups: dict[tuple[str, str], list[int]] = {}
        for k, ref in enumerate(self.resolved):
            groups.setdefault(ref.model_group, []).append(k)
        return groups

    # --- tokenization and keys -------------------------------------------------------------

    @contextmanager
    def _naming_reference(self, k: int) -> Iterator[None]:
        """Prefix a ``ModelSourceError`` with the reference it concerns (position and name)."""
        try:
            yield
        except ModelSourceError as err:
            raise ModelSourceError(f"reference {k} ({self.specs[k].name!r}): {err}") from None

    def tokenizer(self, k: int) -> PreTrainedTokenizerBase:
        """Reference ``k``'s tokenizer (with its chat template override), loaded once."""
        ref = self.resolved[k]
        if ref.tokenizer_group not in self._tokenizers:
            with self._naming_reference(k):
                self._tokenizers[ref.tokenizer_group] = load_tokenizer(
                    ref.tokenizer, chat_template=ref.chat_template, cache_dir=self.model_cache_dir
                )
        return self._tokenizers[ref.tokenizer_group]

    def tokenize(
        self,
        k: int,
        examples: Sequence[PreferenceExample],
        memo: dict[Any, TokenizedPairs] | None = None,
        *,
        keep: bool = False,
    ) -> TokenizedPairs:
        """``examples`` rendered and tokenized as reference ``k`` sees them.

        Args:
            k: the reference.
            examples: the rows.
            memo: a dict the caller keeps for one list of examples; references that see the
                same token ids (same tokenizer, template and system prompt) share the work.
            keep: read and keep the tokenized rows in ``tokenized_cache_dir`` (the data set's
                rows, which later runs tokenize alike; not a live batch's).
        """
        group = self.resolved[k].text_group
        if memo is not None and group in memo:
            return memo[group]
        pairs = prepare_pairs(
            examples,
            self.tokenizer(k),
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            system_prompt=self.specs[k].system_prompt,
            cache_dir=self.tokenized_cache_dir if keep else None,
            num_proc=self.num_proc if keep else 1,
        )
        if memo is not None:
            memo[group] = pairs
        return pairs

    def token_lengths(
        self,
        k: int,
        examples: Sequence[PreferenceExample],
        memo: dict[Any, list[tuple[int, int, int]]] | None = None,
    ) -> list[tuple[int, int, int]]:
        """(prompt, chosen, rejected) token counts of ``examples`` as reference ``k`` sees
        them, before truncation (for length filters); ``memo`` as in :meth:`tokenize`."""
        group = self.resolved[k].text_group
        if memo is not None and group in memo:
            return memo[group]
        lengths = pair_token_lengths(
            examples, self.tokenizer(k), system_prompt=self.specs[k].system_prompt
        )
        if memo is not None:
            memo[group] = lengths
        return lengths

    def _identity(self, k: int, part: str) -> str:
        """Weights (``part="model"``) or tokenizer identity of reference ``k``, computed once."""
        ref = self.resolved[k]
        group = (part, ref.weights if part == "model" else ref.tokenizer_group)
        if group not in self._fingerprints:
            memo = Path(self.model_cache_dir).parent / "hashes" if self.model_cache_dir else None
            self._fingerprints[group] = (
                model_fingerprint(ref.weights, hash_memo_dir=memo)
                if part == "model"
                else tokenizer_fingerprint(self.tokenizer(k))
            )
        return self._fingerprints[group]

    def key(self, k: int, pairs: Sequence[TokenizedPair]) -> RefCacheKey:
        """The cache key of reference ``k`` on rows it has tokenized (see :meth:`tokenize`)."""
        if self.specs[k].is_moving:  # its numbers change with every update
            raise ValueError(f"reference {self.specs[k].name!r} moves and is never cached")
        template = self.tokenizer(k).chat_template
        return RefCacheKey(
            model=self._identity(k, "model"),
            tokenizer=self._identity(k, "tokenizer"),
            chat_template=template if isinstance(template, str) else canonical_json(template),
            system_prompt=self.specs[k].system_prompt,
            data=data_fingerprint(pairs),
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            truncation=TRUNCATION,
            # A quantized reference computes other numbers than its full-precision weights.
            dtype=precision_label(self.specs[k].dtype, self.specs[k].quantization),
            numerics=numerics_label(
                self.device, self.specs[k].quantization, fused_head=self.fused_head
            ),
            shared_logps=self.pair_shared,
        )

    def fingerprint(self, k: int, examples: Sequence[PreferenceExample]) -> RefCacheKey:
        """The cache key of reference ``k`` on ``examples`` (tokenized its own way)."""
        check_distinct_indices(examples)
        return self.key(k, self.tokenize(k, examples).pairs)

    # --- models and scoring ----------------------------------------------------------------

    def load_model(self, k: int) -> torch.nn.Module:
        """Load reference ``k``'s weights: frozen, in eval mode, on :attr:`device`."""
        ref = self.resolved[k]
        spec = ref.spec
        precision = precision_label(spec.dtype, spec.quantization)
        log.info("loading reference model %s (%s) on %s", ref.weights, precision, self.device)
        with self._naming_reference(k):
            model = load_model(
                ref.weights,
                dtype=spec.dtype,
                cache_dir=self.model_cache_dir,
                trainable=False,
                quantization=spec.quantization,
                device=self.device,
            )
        self.stats.model_loads += 1
        if spec.quantization is not None:  # loaded onto the device; quantized weights stay put
            return model
        return model.to(self.device)  # type: ignore[arg-type]  # nn.Module.to, not the hub's

    def score(
        self, k: int, model: torch.nn.Module, pairs: TokenizedPairs, *, progress: bool = False
    ) -> RefLogps:
        """Score reference ``k``'s tokenized rows (:meth:`tokenize`) with its loaded model.

        Returns the raw sums and token counts in input order (``length_normalize`` is applied
        by the caller, through :meth:`RefLogps.values`)."""
        scores = score_pairs(
            model,
            pairs.pairs,
            pad_token_id=self.tokenizer(k).pad_token_id,
            batch_size=self.batch_size,
            progress=progress,
            desc=f"reference {self.specs[k].name}",
            layout=self.layout,
            fused_head=self.fused_head,
            pair_shared=self.pair_shared,
        )
        self.stats.forward_passes += num_forward_passes(len(pairs.pairs), self.batch_size)
        return scores

    def values(self, k: int, scores: RefLogps) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference ``k``'s (N,) chosen and rejected log-probs from its scores, as the
        objective takes them: LD-DPO's ``ld_alpha`` and the spec's ``length_normalize``
        applied."""
        return scores.values(average=self.specs[k].length_normalize, ld_alpha=self.ld_alpha)

    # --- cached mode -----------------------------------------------------------------------

    def precompute(
        self, examples: Sequence[PreferenceExample], *, progress: bool = True
    ) -> Precomputed:
        """Each reference's log-probs on ``examples``: from the cache, or computed and stored.

        A model is loaded only for references missing from the cache, once for all the
        references that share it (e.g. ``self`` and its prompted variants), and freed before
        the next one is loaded. Each reference logs ``cache hit`` or ``computed N rows``.

        Args:
            examples: the rows (distinct ``index`` values).
            progress: show a progress bar while scoring.

        Returns:
            :class:`Precomputed` with K :class:`RefLogps` (rows sorted by index) and counters.
        """
        check_distinct_indices(examples)
        start, before = time.perf_counter(), replace(self.stats)
        memo: dict[Any, TokenizedPairs] = {}
        # Every reference's tokenizer and rows first: an unusable tokenizer or chat template
        # fails here, before any model is loaded or any reference is scored.
        tokenized = [self.tokenize(k, examples, memo, keep=True) for k in range(len(self))]
        results: list[RefLogps] = [None] * len(self)  # type: ignore[list-item]
        for members in self.model_groups().values():
            loaded: list[torch.nn.Module] = []  # filled by the group's first miss
            for k in members:
                results[k] = self._get_or_compute(k, tokenized[k], loaded, progress)
            if loaded:  # drop the group's model before the next group loads its own
                loaded.clear()
                _free_memory()
        self.stats.seconds += time.perf_counter() - start
        return Precomputed(results, self.stats.minus(before))

    def _get_or_compute(
        self, k: int, pairs: TokenizedPairs, loaded: list[torch.nn.Module], progress: bool
    ) -> RefLogps:
        name, key, t0 = self.specs[k].name, self.key(k, pairs.pairs), time.perf_counter()
        meta = {"reference": name, "source": self.resolved[k].weights, "rows": len(pairs.pairs)}
        if self.ranks.world_size > 1:
            value, hit = self._get_or_compute_shard(k, key, pairs, loaded, progress, meta)
        else:
            compute = partial(self._compute, k, pairs, loaded, progress)
            value, hit = self.cache.get_or_compute(key, compute, meta)
        if hit:
            self.stats.hits += 1
            log.info("reference %s: cache hit (%d rows, key %s)", name, len(value), key.digest[:12])
        else:
            self.stats.misses += 1
            dt = time.perf_counter() - t0
            log.info("reference %s: computed %d rows in %.1f s", name, len(value), dt)
        return value

    def _get_or_compute_shard(
        self,
        k: int,
        key: RefCacheKey,
        pairs: TokenizedPairs,
        loaded: list[torch.nn.Module],
        progress: bool,
        meta: dict[str, Any],
    ) -> tuple[RefLogps, bool]:
        """Score this rank's share of a missing entry, then wait for (or join) the others'.

        Returns ``(entry, hit)``; ``hit`` is False when this rank scored rows for it.
        """
        value = self.cache.get(key)
        if value is not None:
            return value, True
        rank, world = self.ranks.rank, self.ranks.world_size
        store = ShardStore(self.cache, key, world)
        scored = store.read(rank) is None  # a shard left by an earlier run is reused
        if scored:
            # Rows are dealt out in row-index order: the same rank scores the same rows
            # whatever order the examples came in (another split seed, another run).
            ordered = sorted(pairs.pairs, key=lambda p: p.index)
            mine = replace(pairs, pairs=ordered[rank::world])
            store.write(rank, self._compute(k, mine, loaded, progress))
            log.info(
                "reference %s: rank %d of %d scored %d rows",
                self.specs[k].name,
                rank,
                world,
                len(mine.pairs),
            )
        value, _ = wait_for_entry(store, timeout=self.shard_timeout, meta=meta)
        return value, not scored

    def _compute(
        self, k: int, pairs: TokenizedPairs, loaded: list[torch.nn.Module], progress: bool
    ) -> RefLogps:
        if not pairs.pairs:  # nothing to score: no reason to load a model
            return RefLogps.empty(shared=self.pair_shared)
        if not loaded:
            loaded.append(self.load_model(k))
        # Stored sorted by row index, whatever the input order.
        scores = self.score(k, loaded[0], pairs, progress=progress).sorted()
        check_finite(scores, f"reference {k} ({self.specs[k].name!r}, {self.resolved[k].weights})")
        return scores

    def table(self, examples: Sequence[PreferenceExample], *, progress: bool = True) -> RefTable:
        """A :class:`RefTable` over ``examples`` (precomputing what the cache lacks)."""
        pre = self.precompute(examples, progress=progress)
        return RefTable.from_logps(
            pre.logps,
            length_normalize=[s.length_normalize for s in self.specs],
            names=self.names,
            ld_alpha=self.ld_alpha,
        )
