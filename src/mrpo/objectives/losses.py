"""The three objectives (DPO, multi-DPO, MRPO) as pure functions.

Shapes: B preference pairs, K references. Policy log-probs ℓθ are (B,) summed (or
length-normalized) response log-probs and carry the gradient; reference log-probs are (K, B)
with row 0 the primary reference and are detached here (references are frozen, so a reference
tensor that requires grad never receives one). Weights are (B, K), non-negative, rows summing to 1.
The elementwise DPO-family losses (``loss_type``) are in :mod:`mrpo.objectives.loss_types`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mrpo.errors import OptionError
from mrpo.objectives.loss_types import LOSS_TYPES
from mrpo.objectives.types import ObjectiveConfig, ObjectiveOutput
from mrpo.objectives.virtual_reference import (
    apply_ctro,
    geometric_reference,
    harmonic_reference,
    pair_weights,
)


def preference_losses(
    logits: torch.Tensor, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0
) -> torch.Tensor:
    """Elementwise DPO-family loss of the logits z (:mod:`mrpo.objectives.loss_types`).

    Args:
        logits: z of any shape, the policy margin minus the reference margin.
        beta: β > 0.
        loss_type: a :data:`~mrpo.objectives.loss_types.LOSS_TYPES` name.
        label_smoothing: ε_ls (sigmoid only).

    Returns:
        Losses with the shape of ``logits``.
    """
    try:
        loss_function = LOSS_TYPES[loss_type]
    except KeyError:
        raise OptionError(
            "loss_type",
            f"unknown option 'loss_type'={loss_type!r}; expected one of {list(LOSS_TYPES)}",
        ) from None
    return loss_function(logits, beta, label_smoothing)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO against one reference (or a virtual one), with detached implicit rewards.

    Args:
        policy_chosen: (B,) ℓθ(y_w).
        policy_rejected: (B,) ℓθ(y_l).
        ref_chosen: (...,  B) ℓ_r(y_w); leading dimensions broadcast (e.g. (K, B) gives one
            loss per reference).
        ref_rejected: like ``ref_chosen`` for y_l.
        beta, loss_type, label_smoothing: see :func:`preference_losses`.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)`` with the broadcast shape; rewards are
        β(ℓθ − ℓ_r), detached.
    """
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = preference_losses(logits, beta, loss_type, label_smoothing)
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


ObjectiveFunction = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, ObjectiveConfig],
    ObjectiveOutput,
]
"""Signature shared by the registered objectives: (policy_chosen (B,), policy_rejected (B,),
ref_chosen (K, B), ref_rejected (K, B), weights (B, K), config) -> ObjectiveOutput."""


def _maybe_ctro(
    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, config: ObjectiveConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not config.ctro:
        return ref_chosen.detach(), ref_rejected.detach(), ref_chosen.new_zeros(())
    return apply_ctro(ref_chosen, ref_rejected, config.epsilon, config.adaptive_epsilon)


def dpo_objective(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    weights: torch.Tensor,
    config: ObjectiveConfig,
) -> ObjectiveOutput:
    """DPO (Rafailov et al. 2023, Eq. 7) against reference 0 only.

    Uses row 0 of the (K, B) reference log-probs and ignores rows 1..K−1 (K = 1 is the normal
    case); ``weights`` should be one-hot on reference 0 and are reported as given. No CTRO.
    """
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen,
        policy_rejected,
        ref_chosen[0],
        ref_rejected[0],
        config.beta,
        config.loss_type,
        config.label_smoothing,
    )
    clip_fraction = ref_chosen.new_zeros(())
    return ObjectiveOutput(losses, chosen_rewards, rejected_rewards, weights, clip_fraction)


def multi_dpo_objective(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    weights: torch.Tensor,
    config: ObjectiveConfig,
) -> ObjectiveOutput:
    """Multi-DPO, the MRPO paper's baseline: L = Σ_k α_k · L_DPO(θ; π̃_k).

    With ``config.ctro`` the references k >= 2 are first clipped (as in the authors' code).
    Rewards are β(ℓθ − Σ_k α_k ℓ̃_k): the implicit reward against the α-weighted mean of the
    (clipped) reference log-probs.
    """
    clipped_chosen, clipped_rejected, clip_fraction = _maybe_ctro(ref_chosen, ref_rejected, config)
    per_reference, _, _ = dpo_loss(
        policy_chosen,
        policy_rejected,
        clipped_chosen,
        clipped_rejected,
        config.beta,
        config.loss_type,
        config.label_smoothing,
    )  # (K, B)
    losses = (weights.detach().transpose(0, 1) * per_reference).sum(dim=0)
    mean_chosen = geometric_reference(clipped_chosen, weights)
    mean_rejected = geometric_reference(clipped_rejected, weights)
    chosen_rewards = config.beta * (policy_chosen - mean_chosen).detach()
    rejected_rewards = config.beta * (policy_rejected - mean_rejected).detach()
    return ObjectiveOutput(losses, chosen_rewards, rejected_rewards, weights, clip_fraction)


def mrpo_objective(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    weights: torch.Tensor,
    config: ObjectiveConfig,
) -> ObjectiveOutput:
    """MRPO (Le et al., AAAI 2025): DPO against the harmonic-mean virtual reference.

    log π̂(y) = −logsumexp_k(log α_k − ℓ̃_k(y)), with ℓ̃ the CTRO-clipped references when
    ``config.ctro``; the loss is the configured DPO-family loss with π̂ as the reference, and the
    rewards are β(ℓθ − log π̂). With ``harmonic_pairing="official"`` (K = 2) the weights are
    paired as in the authors' code (:func:`~mrpo.objectives.virtual_reference.pair_weights`); the
    returned ``weights`` are the coefficients actually applied to 1/π_k.
    """
    clipped_chosen, clipped_rejected, clip_fraction = _maybe_ctro(ref_chosen, ref_rejected, config)
    paired = pair_weights(weights, config.harmonic_pairing)
    virtual_chosen = harmonic_reference(clipped_chosen, paired)
    virtual_rejected = harmonic_reference(clipped_rejected, paired)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen,
        policy_rejected,
        virtual_chosen,
        virtual_rejected,
        config.beta,
        config.loss_type,
        config.label_smoothing,
    )
    return ObjectiveOutput(losses, chosen_rewards, rejected_rewards, paired, clip_fraction)
