"""Typed result and validated configuration shared by the objectives.

Shapes: B = number of preference pairs, K = number of reference models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mrpo.errors import OptionError
from mrpo.objectives.loss_types import LOSS_TYPES, LossParams
from mrpo.objectives.options import (
    HARMONIC_PAIRINGS,
    check_aggregation,
    check_ld_alpha,
    check_loss_params,
    check_range,
    check_real,
    loss_type_names,
    loss_weight_values,
)

__all__ = ["HARMONIC_PAIRINGS", "ObjectiveConfig", "ObjectiveOutput"]


@dataclass(frozen=True)
class ObjectiveOutput:
    """What an objective returns for a batch of B preference pairs.

    Attributes:
        losses: (B,) per-example loss; ``losses.mean()`` is the training loss. Carries the
            gradient with respect to the policy log-probs.
        chosen_rewards: (B,) implicit reward β(ℓθ(y_w) − ℓ_ref(y_w)), detached. ℓ_ref is the
            reference the objective regularizes towards: reference 0 for DPO, the α-weighted
            mean of the (clipped) reference log-probs for multi-DPO, the virtual reference
            log π̂ for MRPO.
        rejected_rewards: (B,) likewise for the rejected responses, detached.
        weights: (B, K) reference weights actually used (non-negative, rows sum to 1).
        clip_fraction: scalar tensor, fraction of the log-probs of references k >= 2 (chosen and
            rejected) that CTRO moved into its band; 0 without CTRO or with K = 1.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    weights: torch.Tensor
    clip_fraction: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """Scalar training loss, the mean of :attr:`losses`."""
        return self.losses.mean()

    @property
    def reward_margins(self) -> torch.Tensor:
        """(B,) detached ``chosen_rewards − rejected_rewards``."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def reward_accuracy(self) -> torch.Tensor:
        """Scalar: fraction of pairs whose chosen reward exceeds the rejected reward."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean()


@dataclass(frozen=True)
class ObjectiveConfig:
    """Scalar options of an objective, validated on construction (:mod:`.options`).

    Attributes:
        beta: KL temperature β > 0.
        loss_type: a :data:`~mrpo.objectives.loss_types.LOSS_TYPES` name, or several (their
            losses are added, weighted by ``loss_weights``).
        loss_weights: one non-negative weight per loss type (None: all 1).
        label_smoothing: ε_ls in [0, 0.5], for the loss types that take it (cDPO for
            ``sigmoid``, the noise rate of ``robust``, EXO's ε, AOT's and SimPO's smoothing).
        f_divergence_type: an :data:`~mrpo.objectives.loss_types.F_DIVERGENCES` name (f-DPO),
            for the loss types of the reward margin.
        f_alpha_divergence_coef: α in [0, 1] of ``alpha_divergence``.
        discopop_tau: DiscoPOP's τ > 0.
        simpo_gamma: SimPO's target margin γ >= 0.
        length_normalize: the policy log-probs are per-token means (the loss types that need
            sums refuse it).
        aggregation: an :data:`~mrpo.objectives.aggregation.AGGREGATIONS` name.
        ctro: clip references k >= 2 into a band around reference 1 (CTRO) before use.
        epsilon: CTRO band half-width ε in [0, 1].
        adaptive_epsilon: split ε between chosen and rejected by their mean reference log-probs.
        harmonic_pairing: one of :data:`HARMONIC_PAIRINGS` (``official`` needs ``harmonic``).
        ld_alpha: LD-DPO's α in [0, 1] (arXiv 2409.06411), or None: the log-probs the objective
            receives are ℓ_public + α(ℓ − ℓ_public), ℓ_public summing each response's first
            min(|y_w|, |y_l|) tokens (:func:`mrpo.logprobs.ld_logps`). The trainer and the
            references apply it where the log-probs are summed; None and 1 leave them as they
            are.

    Raises:
        OptionError: naming the option, for any value outside its range or an unusable
            combination.
    """

    beta: float = 0.1
    loss_type: str | tuple[str, ...] = "sigmoid"
    loss_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    discopop_tau: float = 0.05
    simpo_gamma: float = 0.5
    length_normalize: bool = False
    aggregation: str = "harmonic"
    ctro: bool = False
    epsilon: float = 0.1
    adaptive_epsilon: bool = True
    harmonic_pairing: str = "general"
    ld_alpha: float | None = None

    def __post_init__(self) -> None:
        check_real("beta", self.beta)
        if not self.beta > 0:
            raise OptionError("beta", f"option 'beta' must be > 0, got {self.beta!r}")
        names = loss_type_names(self.loss_type)
        weights = loss_weight_values(self.loss_weights, len(names))
        # Lists from a config become tuples, so the frozen config stays hashable.
        if not isinstance(self.loss_type, str):
            object.__setattr__(self, "loss_type", names)
        if self.loss_weights is not None:
            object.__setattr__(self, "loss_weights", weights)
        for flag in ("ctro", "adaptive_epsilon", "length_normalize"):
            if not isinstance(getattr(self, flag), bool):
                raise OptionError(
                    flag, f"option {flag!r} must be a bool, got {getattr(self, flag)!r}"
                )
        check_loss_params(names, self.params, self.length_normalize)
        check_range("epsilon", self.epsilon, 0.0, 1.0, "in [0, 1]")
        check_aggregation(self.aggregation, self.harmonic_pairing)
        check_ld_alpha(self.ld_alpha)

    @property
    def loss_terms(self) -> tuple[tuple[str, float], ...]:
        """((loss type, weight), ...) in configuration order."""
        names = loss_type_names(self.loss_type)
        return tuple(zip(names, loss_weight_values(self.loss_weights, len(names)), strict=True))

    @property
    def params(self) -> LossParams:
        """The loss types' scalar parameters."""
        return LossParams(
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            f_divergence_type=self.f_divergence_type,
            f_alpha_divergence_coef=self.f_alpha_divergence_coef,
            discopop_tau=self.discopop_tau,
            simpo_gamma=self.simpo_gamma,
        )

    @property
    def batch_coupled(self) -> bool:
        """Whether a configured loss type sorts over the batch (AOT)."""
        return any(LOSS_TYPES[name].batch_coupled for name, _ in self.loss_terms)

    @property
    def needs_token_counts(self) -> bool:
        """Whether a configured loss type reads the response token counts."""
        return any(LOSS_TYPES[name].summed_logps for name, _ in self.loss_terms)
