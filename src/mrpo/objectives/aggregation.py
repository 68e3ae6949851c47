"""How K references become one training signal (``loss.aggregation``): one registry.

Shapes: K references, B pairs; reference log-probs (K, B) (CTRO-clipped where CTRO is on),
weights α (B, K) with rows summing to 1. An aggregation receives ``loss``, the configured loss
type(s) as a function of a reference's log-probs (``(ref_chosen, ref_rejected) -> losses``,
any leading shape), and returns the (B,) losses and the reference the implicit rewards are
measured against:

- ``harmonic`` (MRPO, Le et al. AAAI 2025): log π̂ = −logsumexp_k(log α_k − ℓ_k);
- ``geometric`` (log-linear pool; the exact reverse-KL optimum's reference against several
  references, Aminian et al. arXiv 2502.01203): log π̄ = Σ_k α_k ℓ_k;
- ``arithmetic`` (mixture): log π̃ = logsumexp_k(log α_k + ℓ_k);
- ``loss_mixture`` (multi-DPO): L = Σ_k α_k · L(θ; π_k), rewards against Σ_k α_k ℓ_k.

The three pools are ordered harmonic <= geometric <= arithmetic (weighted power means), and
each is ℓ_1 itself when K = 1 (exactly: log 1 = 0 and logsumexp of one entry is that entry).

Adding an aggregation: a function with the :data:`AggregationFunction` signature and its
:class:`Aggregation` entry in :data:`AGGREGATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from mrpo.objectives.virtual_reference import (
    arithmetic_reference,
    geometric_reference,
    harmonic_reference,
)

ReferenceLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(ref_chosen (..., B), ref_rejected (..., B)) -> losses (..., B) against that reference."""

Pool = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(ref_logps (K, B), weights (B, K)) -> (B,) pooled reference log-probs."""


@dataclass(frozen=True)
class Aggregated:
    """An aggregation's result.

    Attributes:
        losses: (B,) per-pair losses.
        reference_chosen: (B,) detached log-probs of y_w under the reference the rewards use.
        reference_rejected: (B,) likewise for y_l.
    """

    losses: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor


AggregationFunction = Callable[
    [ReferenceLoss, torch.Tensor, torch.Tensor, torch.Tensor], Aggregated
]
"""(loss, ref_chosen (K, B), ref_rejected (K, B), weights (B, K)) -> :class:`Aggregated`."""


def pooled(
    pool: Pool,
    loss: ReferenceLoss,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    weights: torch.Tensor,
) -> Aggregated:
    """The loss against one virtual reference, ``pool`` of the K references."""
    virtual_chosen = pool(ref_chosen, weights)
    virtual_rejected = pool(ref_rejected, weights)
    return Aggregated(loss(virtual_chosen, virtual_rejected), virtual_chosen, virtual_rejected)


def harmonic(
    loss: ReferenceLoss, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, w: torch.Tensor
) -> Aggregated:
    """The loss against the weighted harmonic mean of the references (MRPO)."""
    return pooled(harmonic_reference, loss, ref_chosen, ref_rejected, w)


def geometric(
    loss: ReferenceLoss, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, w: torch.Tensor
) -> Aggregated:
    """The loss against the weighted geometric mean (the log-linear pool)."""
    return pooled(geometric_reference, loss, ref_chosen, ref_rejected, w)


def arithmetic(
    loss: ReferenceLoss, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, w: torch.Tensor
) -> Aggregated:
    """The loss against the weighted arithmetic mean of the references' probabilities."""
    return pooled(arithmetic_reference, loss, ref_chosen, ref_rejected, w)


def loss_mixture(
    loss: ReferenceLoss, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, w: torch.Tensor
) -> Aggregated:
    """Σ_k α_k · L(θ; π_k): one loss per reference, weighted (multi-DPO)."""
    per_reference = loss(ref_chosen, ref_rejected)  # (K, B)
    losses = (w.detach().transpose(0, 1) * per_reference).sum(dim=0)
    mean_chosen = geometric_reference(ref_chosen, w)
    mean_rejected = geometric_reference(ref_rejected, w)
    return Aggregated(losses, mean_chosen, mean_rejected)


@dataclass(frozen=True)
class Aggregation:
    """A registered aggregation.

    Attributes:
        function: the pure :data:`AggregationFunction`.
        source: where it comes from.
        weighs_losses: weights multiply per-reference losses rather than pool references; a
            batch-coupled loss type (AOT, which sorts over the batch) then gets each
            reference's batch-mean weight, since its per-pair losses are in sorted order.
    """

    function: AggregationFunction
    source: str
    weighs_losses: bool = False


AGGREGATIONS: Mapping[str, Aggregation] = MappingProxyType(
    {
        "harmonic": Aggregation(harmonic, "MRPO, Le et al., AAAI 2025 (arXiv 2405.16388)"),
        "geometric": Aggregation(geometric, "Aminian et al., arXiv 2502.01203"),
        "arithmetic": Aggregation(arithmetic, "mixture of the references"),
        "loss_mixture": Aggregation(loss_mixture, "multi-DPO (MRPO's baseline)", True),
    }
)
"""``aggregation`` -> :class:`Aggregation`."""
