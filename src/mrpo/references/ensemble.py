"""``ReferenceEnsemble``: K references, their identities (cache keys), tokenization and models.

Cached mode is :mod:`mrpo.references.cached`, live mode :mod:`mrpo.references.live`."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mrpo.data.layout import PADDED, PairLayout
from mrpo.data.pipeline import DataConfig, pair_layout, tokenized_cache_dir
from mrpo.data.prepare import prepare_pairs, tokenizer_fingerprint
from mrpo.data.tokenize import TokenizedPairs, pair_token_lengths
from mrpo.data.types import PreferenceExample, TokenizedPair
from mrpo.logprobs import ld_active
from mrpo.models import ModelSourceError, load_model, load_tokenizer, model_fingerprint
from mrpo.models.policy import ModelConfig, model_cache_dir
from mrpo.models.quantization import precision_label
from mrpo.references import cached
from mrpo.references.cache import RefCache
from mrpo.references.cache_entry import RefCacheKey, canonical_json, numerics_label
from mrpo.references.logps import RefLogps
from mrpo.references.scoring import data_fingerprint, num_forward_passes, score_pairs
from mrpo.references.sharding import RankInfo, detect_ranks
from mrpo.references.spec import (
    ReferencesConfig,
    ReferenceSpec,
    ResolvedReference,
    resolve_reference,
)
from mrpo.references.table import RefTable

log = logging.getLogger("mrpo.references")

TRUNCATION = "prompt-keep-end,response-keep-start"
"""Name of the truncation rule of :mod:`mrpo.data.tokenize`; a part of every cache key."""


def _check_and_resolve(
    specs: Sequence[ReferenceSpec], **policy: str | None
) -> tuple[ResolvedReference, ...]:
    """The specs checked (see :class:`ReferenceEnsemble`'s errors) and resolved against the
    policy's ``policy_source``, ``policy_tokenizer`` and ``policy_chat_template``."""
    if not specs:
        raise ValueError("a reference ensemble needs at least one reference")
    for spec in specs:
        spec.check()
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"reference names must be unique; repeated: {repeated}")
    return tuple(resolve_reference(s, **policy) for s in specs)


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
        if batch_size < 1:
            raise ValueError(f"references batch_size must be >= 1, got {batch_size}")
        self.specs = tuple(specs)
        self.resolved = _check_and_resolve(
            self.specs,
            policy_source=policy_source,
            policy_tokenizer=policy_tokenizer,
            policy_chat_template=policy_chat_template,
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
        default = f"cuda:{self.ranks.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(default if device is None else device)
        self.stats = cached.ReferenceStats()
        self._tokenizers: dict[tuple[str, str | None], Any] = {}
        self._fingerprints: dict[tuple[str, Any], str] = {}

    @classmethod
    def for_run(
        cls,
        specs: Sequence[ReferenceSpec],
        *,
        model: ModelConfig,
        data: DataConfig,
        settings: ReferencesConfig,
        cache_dir: str | Path,
        ld_alpha: float | None = None,
    ) -> ReferenceEnsemble:
        """The ensemble of a training run: its policy's sources (``model``), its data's lengths
        and layout, the references group's ``settings``, and the caches under ``cache_dir``
        (log-probs in ``reflogps``, converted models, tokenized pairs)."""
        cache = Path(cache_dir)
        return cls(
            specs,
            policy_source=model.source,
            policy_tokenizer=model.tokenizer,
            policy_chat_template=model.chat_template,
            max_length=data.max_length,
            max_prompt_length=data.max_prompt_length,
            cache_dir=cache / "reflogps",
            batch_size=settings.batch_size,
            model_cache_dir=model_cache_dir(cache),
            ranks=detect_ranks() if settings.split_across_ranks else None,
            shard_timeout=settings.shard_timeout_s,
            lock_timeout=settings.lock_timeout_s,
            layout=pair_layout(data),
            tokenized_cache_dir=tokenized_cache_dir(cache),
            num_proc=data.num_proc,
            fused_head=model.fused_lm_head,
            ld_alpha=ld_alpha,
        )

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
        memo, group = {} if memo is None else memo, self.resolved[k].text_group
        if group not in memo:
            memo[group] = prepare_pairs(
                examples,
                self.tokenizer(k),
                max_length=self.max_length,
                max_prompt_length=self.max_prompt_length,
                system_prompt=self.specs[k].system_prompt,
                cache_dir=self.tokenized_cache_dir if keep else None,
                num_proc=self.num_proc if keep else 1,
            )
        return memo[group]

    def token_lengths(
        self,
        k: int,
        examples: Sequence[PreferenceExample],
        memo: dict[Any, list[tuple[int, int, int]]] | None = None,
    ) -> list[tuple[int, int, int]]:
        """(prompt, chosen, rejected) token counts of ``examples`` as reference ``k`` sees
        them, before truncation (for length filters); ``memo`` as in :meth:`tokenize`."""
        memo, group = {} if memo is None else memo, self.resolved[k].text_group
        if group not in memo:
            system_prompt = self.specs[k].system_prompt
            memo[group] = pair_token_lengths(
                examples, self.tokenizer(k), system_prompt=system_prompt
            )
        return memo[group]

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
        cached.check_distinct_indices(examples)
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

    # --- cached mode (:mod:`mrpo.references.cached`) -------------------------------------

    def precompute(
        self, examples: Sequence[PreferenceExample], *, progress: bool = True
    ) -> cached.Precomputed:
        """Each reference's log-probs on ``examples``, from the cache or computed and stored
        (:func:`mrpo.references.cached.precompute`)."""
        return cached.precompute(self, examples, progress=progress)

    def table(self, examples: Sequence[PreferenceExample], *, progress: bool = True) -> RefTable:
        """A :class:`RefTable` over ``examples`` (precomputing what the cache lacks)."""
        return cached.table(self, examples, progress=progress)
