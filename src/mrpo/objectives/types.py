"""Typed result and validated configuration shared by the objectives.

Shapes: B = number of preference pairs, K = number of reference models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mrpo.errors import OptionError
from mrpo.objectives.loss_types import LOSS_TYPES, SMOOTHED_LOSS_TYPES

HARMONIC_PAIRINGS: tuple[str, ...] = ("general", "official")
"""Accepted ``harmonic_pairing`` values of MRPO (see :func:`.reference.pair_weights`)."""


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
    """Scalar options of an objective, validated on construction.

    Attributes:
        beta: KL temperature β > 0.
        loss_type: a :data:`~mrpo.objectives.loss_types.LOSS_TYPES` name.
        label_smoothing: ε_ls in [0, 0.5] (conservative DPO); only with the loss types that
            take it (``sigmoid``).
        ctro: clip references k >= 2 into a band around reference 1 (CTRO) before use.
        epsilon: CTRO band half-width ε in [0, 1].
        adaptive_epsilon: split ε between chosen and rejected by their mean reference log-probs.
        harmonic_pairing: one of :data:`HARMONIC_PAIRINGS` (MRPO only).

    Raises:
        OptionError: naming the option, for any value outside its range.
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    ctro: bool = False
    epsilon: float = 0.1
    adaptive_epsilon: bool = True
    harmonic_pairing: str = "general"

    def __post_init__(self) -> None:
        _check_real("beta", self.beta)
        if not self.beta > 0:
            raise OptionError("beta", f"option 'beta' must be > 0, got {self.beta!r}")
        if self.loss_type not in LOSS_TYPES:
            raise OptionError(
                "loss_type",
                f"unknown option 'loss_type'={self.loss_type!r}; "
                f"expected one of {list(LOSS_TYPES)}",
            )
        _check_real("label_smoothing", self.label_smoothing)
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise OptionError(
                "label_smoothing",
                f"option 'label_smoothing' must be in [0, 0.5], got {self.label_smoothing!r}",
            )
        if self.label_smoothing > 0 and self.loss_type not in SMOOTHED_LOSS_TYPES:
            raise OptionError(
                "label_smoothing",
                f"option 'label_smoothing' applies to loss_type='sigmoid' only, "
                f"got loss_type={self.loss_type!r} with label_smoothing={self.label_smoothing!r}",
            )
        for flag in ("ctro", "adaptive_epsilon"):
            if not isinstance(getattr(self, flag), bool):
                raise OptionError(
                    flag, f"option {flag!r} must be a bool, got {getattr(self, flag)!r}"
                )
        _check_real("epsilon", self.epsilon)
        if not 0.0 <= self.epsilon <= 1.0:
            raise OptionError(
                "epsilon", f"option 'epsilon' must be in [0, 1], got {self.epsilon!r}"
            )
        if self.harmonic_pairing not in HARMONIC_PAIRINGS:
            raise OptionError(
                "harmonic_pairing",
                f"unknown option 'harmonic_pairing'={self.harmonic_pairing!r}; "
                f"expected one of {list(HARMONIC_PAIRINGS)}",
            )


def _check_real(name: str, value: object) -> None:
    """Raise OptionError unless ``value`` is a finite real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OptionError(name, f"option {name!r} must be a finite number, got {value!r}")
