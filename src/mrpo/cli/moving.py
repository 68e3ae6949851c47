"""The training run's moving references (``source: moving``): their copies and their scorer.

A step of :mod:`mrpo.cli.train`, beside :mod:`mrpo.cli.steps`: when some pool entry moves,
the run gets a :class:`~mrpo.references.moving.MovingReferences` (copies of the policy, part
of the module and its checkpoints) and a :class:`~mrpo.references.moving.MixedReferences`
that puts the static references' log-probs (cached in the batch, or live) and the moving ones'
(scored on each batch) in pool order.
"""

from __future__ import annotations

import torch

from mrpo.cli.steps import PreparedReferences, build_ensemble, live_references
from mrpo.config.schema import TrainConfig
from mrpo.data.pipeline import PreparedData
from mrpo.groups.references import reference_specs
from mrpo.references.moving import MixedReferences, MovingReferences, cached_in_batch
from mrpo.training.module import LiveReferenceFn


def reference_scoring(
    cfg: TrainConfig, refs: PreparedReferences, policy: torch.nn.Module, data: PreparedData
) -> tuple[MovingReferences | None, LiveReferenceFn | None]:
    """The moving references' copies (None without any) and the per-batch reference scorer
    (None when every reference is cached in the batch)."""
    static = live_references(refs, policy, data)
    if not any(spec.is_moving for spec in reference_specs(cfg)):
        return None, static
    ensemble = build_ensemble(cfg)
    moving = MovingReferences(ensemble, policy)
    if static is None and refs.table is not None:
        return moving, MixedReferences(ensemble, moving, data.all_examples, cached_in_batch)
    return moving, MixedReferences(ensemble, moving, data.all_examples, static)
