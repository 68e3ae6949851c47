"""Typed result and validated configuration shared by the objectives.

Shapes: B = number of preference pairs, K = number of reference models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mrpo.domains import AnyOf, Choice, Flag, Items, Number, setting
from mrpo.errors import OptionError
from mrpo.objectives.aggregation import AGGREGATIONS
from mrpo.objectives.loss_types import F_DIVERGENCES, LOSS_TYPES, LossParams
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

_UNIT = Number(float, ge=0, le=1)
_LOSS_TYPE = Choice(lambda: list(LOSS_TYPES))


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


@dataclass
class ObjectiveConfig:
    """Scalar options of an objective (:func:`~mrpo.objectives.get_objective` checks them with
    :meth:`check`), each field with its domain: the ``loss`` config group is these settings and
    an objective's name (:class:`~mrpo.objectives.registry.LossConfig`).

    Attributes:
        beta: KL temperature β > 0.
        loss_type: a :data:`~mrpo.objectives.loss_types.LOSS_TYPES` name, or several (their
            losses are added, weighted by ``loss_weights``).
        loss_weights: one non-negative weight per loss type (None: all 1).
        aggregation: how K references combine, an
            :data:`~mrpo.objectives.aggregation.AGGREGATIONS` name (None: the objective's own).
        label_smoothing: ε_ls in [0, 0.5], for the loss types that take it (cDPO for
            ``sigmoid``, the noise rate of ``robust``, EXO's ε, AOT's and SimPO's smoothing).
        f_divergence_type: an :data:`~mrpo.objectives.loss_types.F_DIVERGENCES` name (f-DPO),
            for the loss types of the reward margin.
        f_alpha_divergence_coef: α in [0, 1] of ``alpha_divergence``.
        discopop_tau: DiscoPOP's τ > 0.
        simpo_gamma: SimPO's target margin γ >= 0.
        ctro: clip references k >= 2 into a band around reference 1 (CTRO) before use (None:
            the objective's own; off for one without).
        epsilon: CTRO band half-width ε in [0, 1].
        adaptive_epsilon: split ε between chosen and rejected by their mean reference log-probs.
        harmonic_pairing: one of :data:`HARMONIC_PAIRINGS` (``official`` needs ``harmonic``).
        length_normalize: the policy log-probs are per-token means (the loss types that need
            sums refuse it).
        ld_alpha: LD-DPO's α in [0, 1] (arXiv 2409.06411, TRL's ``ld_alpha``), or None: the
            log-probs the objective receives are ℓ_public + α(ℓ − ℓ_public), ℓ_public summing
            each response's first min(|y_w|, |y_l|) tokens (:func:`mrpo.logprobs.ld_logps`).
            The trainer and the references apply it where the log-probs are summed; None and 1
            leave them as they are.
    """

    beta: float = setting(0.1, Number(float, gt=0))
    loss_type: Any = setting("sigmoid", AnyOf((_LOSS_TYPE, Items(_LOSS_TYPE, min_len=1))))
    loss_weights: list[float] | None = setting(
        None, Items(Number(float, ge=0), min_len=1, nullable=True)
    )
    aggregation: str | None = setting(None, Choice(lambda: list(AGGREGATIONS), nullable=True))
    label_smoothing: float = setting(0.0, Number(float, ge=0, le=0.5))
    f_divergence_type: str = setting("reverse_kl", Choice(lambda: list(F_DIVERGENCES)))
    f_alpha_divergence_coef: float = setting(0.5, _UNIT)
    discopop_tau: float = setting(0.05, Number(float, gt=0))
    simpo_gamma: float = setting(0.5, Number(float, ge=0))
    ctro: bool | None = setting(None, Flag(nullable=True))
    epsilon: float = setting(0.1, _UNIT)
    adaptive_epsilon: bool = setting(True, Flag())
    harmonic_pairing: str = setting("general", Choice(HARMONIC_PAIRINGS))
    length_normalize: bool = setting(False, Flag())
    ld_alpha: float | None = setting(None, Number(float, ge=0, le=1, nullable=True))

    def check(self) -> None:
        """Raise :class:`OptionError` naming the option, for any value outside its range or an
        unusable combination (a list of loss types becomes a tuple)."""
        check_real("beta", self.beta)
        if not self.beta > 0:
            raise OptionError("beta", f"option 'beta' must be > 0, got {self.beta!r}")
        names = loss_type_names(self.loss_type)
        loss_weight_values(self.loss_weights, len(names))
        if not isinstance(self.loss_type, str):
            self.loss_type = names
        for flag in ("ctro", "adaptive_epsilon", "length_normalize"):
            value = getattr(self, flag)
            if not isinstance(value, bool) and (flag != "ctro" or value is not None):
                raise OptionError(flag, f"option {flag!r} must be a bool, got {value!r}")
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
