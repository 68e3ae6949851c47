"""The objectives as pure functions: DPO against reference 0, and any aggregation of K.

Shapes: B preference pairs, K references. Policy log-probs ℓθ are (B,) summed (or
length-normalized) response log-probs and carry the gradient; reference log-probs are (K, B)
with row 0 the primary reference and are detached here (references are frozen, so a reference
tensor that requires grad never receives one). Weights are (B, K), non-negative, rows summing
to 1. Token counts, where given, are (B,) response token counts of y_w and y_l. The loss types
are in :mod:`mrpo.objectives.loss_types`, the aggregations in :mod:`mrpo.objectives.aggregation`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mrpo.objectives.aggregation import AGGREGATIONS
from mrpo.objectives.loss_types import LOSS_TYPES, PairLogps
from mrpo.objectives.types import ObjectiveConfig, ObjectiveOutput
from mrpo.objectives.virtual_reference import apply_ctro, pair_weights

TokenCounts = tuple[torch.Tensor, torch.Tensor] | None
"""(chosen (B,), rejected (B,)) response token counts, or None."""

ObjectiveFunction = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        ObjectiveConfig,
        TokenCounts,
    ],
    ObjectiveOutput,
]
"""Signature shared by the registered objectives: (policy_chosen (B,), policy_rejected (B,),
ref_chosen (K, B), ref_rejected (K, B), weights (B, K), config, token counts) ->
ObjectiveOutput."""


def configured_loss(pair: PairLogps, config: ObjectiveConfig) -> torch.Tensor:
    """Σ_j w_j · L_j(pair): the configured loss type(s), weighted by ``loss_weights``.

    Args:
        pair: policy (B,) and reference (..., B) log-probs (and token counts).
        config: the objective's options.

    Returns:
        (..., B) losses.
    """
    params = config.params
    total: torch.Tensor | None = None
    for name, weight in config.loss_terms:
        term = weight * LOSS_TYPES[name].function(pair, params)
        total = term if total is None else total + term
    assert total is not None  # the config names at least one loss type
    return total


def _pair(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    tokens: TokenCounts,
) -> PairLogps:
    chosen_tokens, rejected_tokens = tokens if tokens is not None else (None, None)
    return PairLogps(
        policy_chosen,
        policy_rejected,
        ref_chosen.detach(),
        ref_rejected.detach(),
        chosen_tokens,
        rejected_tokens,
    )


def _rewards(
    policy: torch.Tensor, reference: torch.Tensor, config: ObjectiveConfig
) -> torch.Tensor:
    return config.beta * (policy - reference).detach()


def dpo_objective(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    weights: torch.Tensor,
    config: ObjectiveConfig,
    tokens: TokenCounts = None,
) -> ObjectiveOutput:
    """The configured loss type(s) against reference 0 only (DPO, Rafailov et al. 2023, Eq. 7,
    for ``sigmoid``).

    Uses row 0 of the (K, B) reference log-probs and ignores rows 1..K−1 (K = 1 is the normal
    case); ``weights`` should be one-hot on reference 0 and are reported as given. No CTRO.
    """
    pair = _pair(policy_chosen, policy_rejected, ref_chosen[0], ref_rejected[0], tokens)
    losses = configured_loss(pair, config)
    chosen_rewards = _rewards(policy_chosen, pair.ref_chosen, config)
    rejected_rewards = _rewards(policy_rejected, pair.ref_rejected, config)
    clip_fraction = ref_chosen.new_zeros(())
    return ObjectiveOutput(losses, chosen_rewards, rejected_rewards, weights, clip_fraction)


def multi_reference_objective(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    weights: torch.Tensor,
    config: ObjectiveConfig,
    tokens: TokenCounts = None,
) -> ObjectiveOutput:
    """The configured loss type(s) against K references through ``config.aggregation``.

    Order: CTRO clips references k >= 2 (``config.ctro``), the weights are paired
    (``harmonic_pairing="official"``, K = 2: the weight the strategy gives reference 2
    multiplies 1/π_1, :func:`~mrpo.objectives.virtual_reference.pair_weights`), then the
    aggregation combines the references (or the per-reference losses). MRPO is ``harmonic``
    with CTRO, multi-DPO ``loss_mixture``. The returned ``weights`` are the coefficients the
    aggregation applied; rewards are β(ℓθ − ℓ_ref) against the aggregation's reference.
    """
    if config.ctro:
        ref_chosen, ref_rejected, clip_fraction = apply_ctro(
            ref_chosen, ref_rejected, config.epsilon, config.adaptive_epsilon
        )
    else:
        ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
        clip_fraction = ref_chosen.new_zeros(())
    paired = pair_weights(weights, config.harmonic_pairing)
    aggregation = AGGREGATIONS[config.aggregation or "harmonic"]  # None: MRPO's
    if aggregation.weighs_losses and config.batch_coupled:
        # AOT's per-pair losses are in sorted order: weigh each reference's batch loss by its
        # batch-mean weight (identical for weightings that are constant over the batch).
        paired = paired.mean(dim=0, keepdim=True).expand_as(paired)

    def loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        return configured_loss(
            _pair(policy_chosen, policy_rejected, chosen, rejected, tokens), config
        )

    result = aggregation.function(loss, ref_chosen, ref_rejected, paired)
    chosen_rewards = _rewards(policy_chosen, result.reference_chosen, config)
    rejected_rewards = _rewards(policy_rejected, result.reference_rejected, config)
    return ObjectiveOutput(result.losses, chosen_rewards, rejected_rewards, paired, clip_fraction)
