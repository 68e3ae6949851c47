"""The reference ensemble: K frozen reference models, their cached log-probs, live scoring.

A reference is described by a :class:`ReferenceSpec`. Its ``source`` is a model source (hub
id, directory, GGUF file, ``packaged:smollm2-135m-instruct``) or ``"self"``: the policy's
initial weights, with the policy's tokenizer. The same weights with a different
``system_prompt`` make a *prompted reference*, a cheap way to get distinct reference
distributions offline.

Cross-tokenizer: every reference renders the pair's *text* with its own chat template and
system prompt, tokenizes it with its own tokenizer, and sums its own token log-probs over the
response span. The policy's token ids are never fed to a reference.

Cached mode (:meth:`ReferenceEnsemble.precompute`, :meth:`ReferenceEnsemble.table`): each
reference's log-probs on a list of rows are computed once and stored in a
:class:`~mrpo.references.cache.RefCache`, keyed by everything that determines them; runs and sweep
jobs that need the same reference reuse the file, and no reference model is in memory while
training. Live mode (:class:`LiveReferences`) keeps the models in memory and scores every batch, for
on-policy data and for checking the cache.

Modules: ``spec`` (what a reference is), ``logps`` (one reference's per-row log-probs),
``scoring`` (batched scoring and fingerprints), ``cache_entry`` (a cache entry: key, file
format), ``cache`` (the directory of entries, its locks), ``sharding`` (scoring split across
data-parallel ranks), ``ensemble`` (the references: keys, tokenization, models), ``cached``
(cached mode: precompute, table), ``table`` (K references' log-probs for batch lookup), ``live``
(live mode), ``updates`` and ``moving`` (references that follow the policy, TR-DPO: scored
live, never cached), ``prepared`` (a training run's references made ready).
"""

from mrpo.data.prepare import tokenizer_fingerprint
from mrpo.references.cache import RefCache
from mrpo.references.cache_entry import RefCacheKey
from mrpo.references.cached import Precomputed, ReferenceStats, check_distinct_indices
from mrpo.references.ensemble import TRUNCATION, ReferenceEnsemble
from mrpo.references.live import LiveReferences
from mrpo.references.logps import RefLogps
from mrpo.references.moving import MixedReferences, MovingReferences
from mrpo.references.scoring import adapters_disabled, data_fingerprint, score_pairs
from mrpo.references.spec import SELF, ReferenceSpec, ResolvedReference, resolve_reference
from mrpo.references.table import RefTable
from mrpo.references.updates import MOVING, UPDATES, MovingSchedule

__all__ = [
    "MOVING",
    "SELF",
    "TRUNCATION",
    "UPDATES",
    "LiveReferences",
    "MixedReferences",
    "MovingReferences",
    "MovingSchedule",
    "Precomputed",
    "RefCache",
    "RefCacheKey",
    "RefLogps",
    "RefTable",
    "ReferenceEnsemble",
    "ReferenceSpec",
    "ReferenceStats",
    "ResolvedReference",
    "adapters_disabled",
    "check_distinct_indices",
    "data_fingerprint",
    "resolve_reference",
    "score_pairs",
    "tokenizer_fingerprint",
]
