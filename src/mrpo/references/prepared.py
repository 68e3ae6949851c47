"""A training run's references made ready: the log-prob cache filled, the per-batch scorer
(static references live or cached in the batch, moving ones in pool order with them:
:class:`~mrpo.references.moving.MixedReferences`), validation-based weights fitted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mrpo.references.ensemble import ReferenceEnsemble
from mrpo.references.live import LiveReferences
from mrpo.references.moving import MixedReferences, MovingReferences, cached_in_batch
from mrpo.references.spec import ReferenceSpec
from mrpo.references.table import RefTable

if TYPE_CHECKING:
    from mrpo.data.pipeline import PreparedData
    from mrpo.objectives import Objective

log = logging.getLogger("mrpo.train")

EnsembleOf = Callable[[Sequence[ReferenceSpec]], ReferenceEnsemble]
"""Builds the ensemble of some of the run's references (its cache, ranks and settings)."""


@dataclass
class PreparedReferences:
    """The run's references (``specs``, of which ``ensemble_of`` builds ensembles), the static
    ones (moving ones are never cached) and, in cached mode, their log-prob table over every
    row; ``ensemble`` is None when every reference moves."""

    specs: Sequence[ReferenceSpec]
    ensemble_of: EnsembleOf
    ensemble: ReferenceEnsemble | None = None
    table: RefTable | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def prepare_references(
    specs: Sequence[ReferenceSpec], ensemble_of: EnsembleOf, mode: str, data: PreparedData
) -> PreparedReferences:
    """Fill (or reuse) the reference log-prob cache for every row the run needs.

    In cached mode every reference scores the train and validation rows once, one model in
    memory at a time, and later runs with the same references and rows read the cache. In
    live mode only the validation rows are cached (offline weightings fit on them) and the
    references score training batches as they come. Moving references (``source: moving``)
    are left out: they are scored live, with their weights of the moment.
    """
    static = [s for s in specs if not s.is_moving]
    # The run's record names the references it never cached (stage=cache included).
    moving = (
        {"not_cached": [s.name for s in specs if s.is_moving]} if len(static) < len(specs) else {}
    )
    refs = PreparedReferences(specs, ensemble_of, stats=moving)
    if not static:
        return refs
    refs.ensemble = ensemble_of(static)
    if mode == "live":
        stats = refs.ensemble.precompute(data.val_examples).stats
    else:
        refs.table = refs.ensemble.table(data.all_examples)
        stats = refs.ensemble.stats
    refs.stats = {**asdict(stats), **moving}
    return refs


def live_references(
    refs: PreparedReferences, policy: torch.nn.Module, data: PreparedData
) -> LiveReferences | None:
    """A per-batch scorer of the static references in live mode (None in cached mode, or
    when there is none)."""
    if refs.table is not None or refs.ensemble is None:
        return None
    return LiveReferences(refs.ensemble, policy=policy, examples=data.all_examples)


def reference_scoring(
    refs: PreparedReferences, policy: torch.nn.Module, data: PreparedData
) -> tuple[MovingReferences | None, LiveReferences | MixedReferences | None]:
    """The moving references' copies (None without any) and the per-batch reference scorer
    (None when every reference is cached in the batch)."""
    static = live_references(refs, policy, data)
    if not any(spec.is_moving for spec in refs.specs):
        return None, static
    ensemble = refs.ensemble_of(refs.specs)
    moving = MovingReferences(ensemble, policy)
    static_scores = cached_in_batch if refs.table is not None else static
    return moving, MixedReferences(ensemble, moving, data.all_examples, static_scores)


def fit_offline_weights(objective: Objective, refs: PreparedReferences, data: PreparedData) -> None:
    """Fit validation-based weightings (vdw, vaw) on the references' validation log-probs."""
    strategy = objective.weighting
    if not strategy.fits_on_validation:
        return
    assert refs.ensemble is not None, "refused with moving references (mrpo.groups.moving)"
    val = refs.ensemble.precompute(data.val_examples, progress=False).logps
    index = torch.tensor([ex.index for ex in data.val_examples])
    # Summed log-probs (LD-DPO's where loss.ld_alpha is on): the strategy divides by length.
    sums = [ref.select(index).values(ld_alpha=refs.ensemble.ld_alpha) for ref in val]
    rows = [ref.select(index) for ref in val]
    strategy.fit(  # type: ignore[attr-defined]  # declared by fits_on_validation
        torch.stack([chosen for chosen, _ in sums]),
        torch.stack([rejected for _, rejected in sums]),
        torch.stack([r.chosen_tokens for r in rows]),
        torch.stack([r.rejected_tokens for r in rows]),
    )
    log.info("fitted %s weights: %s", strategy.name, getattr(strategy, "fitted", None))
