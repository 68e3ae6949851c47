"""What a loss type sees: the log-probs of a batch of pairs and the scalar loss parameters.

Shapes: B preference pairs. Policy log-probs are (B,) and carry the gradient. Reference
log-probs are (..., B): (B,) for one (possibly aggregated) reference, (K, B) for one loss per
reference (``loss_mixture``); every loss type broadcasts over the leading dimensions and
returns losses of the broadcast shape.

The f-divergence transforms (f-DPO, Wang et al. 2023, arXiv 2309.16240) map a log-ratio
u = ℓθ(y) − ℓ_ref(y) to the score f'(e^u) that the margin-based loss types compare; with the
default ``reverse_kl`` the score is u itself (DPO).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossParams:
    """Scalar parameters of the loss types (validated by :class:`~mrpo.objectives.ObjectiveConfig`).

    Attributes:
        beta: β > 0.
        label_smoothing: ε_ls (cDPO for ``sigmoid``; the noise rate of ``robust``; EXO's ε).
        f_divergence_type: an :data:`F_DIVERGENCES` name.
        f_alpha_divergence_coef: α of ``alpha_divergence``.
        discopop_tau: DiscoPOP's temperature τ.
        simpo_gamma: SimPO's target reward margin γ.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    discopop_tau: float = 0.05
    simpo_gamma: float = 0.5


@dataclass(frozen=True)
class PairLogps:
    """The log-probs one loss evaluation uses.

    Attributes:
        policy_chosen: (B,) ℓθ(y_w), summed over response tokens (or length-normalized).
        policy_rejected: (B,) ℓθ(y_l).
        ref_chosen: (..., B) ℓ_ref(y_w), detached.
        ref_rejected: (..., B) ℓ_ref(y_l), detached.
        chosen_tokens: (B,) response token counts of y_w, or None when the caller has none
            (the loss types that need them refuse to run without).
        rejected_tokens: (B,) likewise for y_l.
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor | None = None
    rejected_tokens: torch.Tensor | None = None

    @property
    def chosen_logratios(self) -> torch.Tensor:
        """(..., B) u_w = ℓθ(y_w) − ℓ_ref(y_w)."""
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        """(..., B) u_l = ℓθ(y_l) − ℓ_ref(y_l)."""
        return self.policy_rejected - self.ref_rejected

    def token_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) response token counts of y_w and y_l as floats, at least 1.

        Raises:
            ValueError: when the caller passed no token counts.
        """
        if self.chosen_tokens is None or self.rejected_tokens is None:
            raise ValueError("this loss type needs the response token counts (chosen_tokens)")
        dtype = self.policy_chosen.dtype
        return (
            self.chosen_tokens.to(dtype).clamp(min=1.0),
            self.rejected_tokens.to(dtype).clamp(min=1.0),
        )


ScoreFunction = Callable[[torch.Tensor, float], torch.Tensor]
"""(log-ratio u of any shape, α) -> score f'(e^u) of the same shape."""


def reverse_kl_score(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Reverse KL (DPO): f'(t) = log t + 1, the constant cancelling in the margin: u."""
    return u


def forward_kl_score(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Forward KL: f'(t) = 1 − 1/t, i.e. 1 − e^{−u}."""
    return 1.0 - torch.exp(-u)


def js_divergence_score(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Jensen-Shannon: f'(t) = log(2t / (t + 1)) = log 2 + log σ(u)."""
    return math.log(2.0) + F.logsigmoid(u)


def alpha_divergence_score(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-divergence: f'(t) = (t^{α−1} − 1) / (α − 1); u itself in the limit α → 1.

    The exponent is clamped at 80 (as TRL does) so e^{(α−1)u} stays finite in float32.
    """
    if abs(alpha - 1.0) < 1e-6:
        return u
    t = torch.clamp((alpha - 1.0) * u, max=80.0)
    return (torch.exp(t) - 1.0) / (alpha - 1.0)


@dataclass(frozen=True)
class FDivergence:
    """An f-divergence: its score f'(e^u), and whether the margin is DPO's exact difference.

    ``reverse_kl`` computes the margin as (ℓθ(y_w) − ℓθ(y_l)) − (ℓ_ref(y_w) − ℓ_ref(y_l)),
    the order mrpo's DPO always used (so its values stay bit-identical); the others subtract
    the two scores.
    """

    score: ScoreFunction
    dpo_margin: bool = False


F_DIVERGENCES: Mapping[str, FDivergence] = MappingProxyType(
    {
        "reverse_kl": FDivergence(reverse_kl_score, dpo_margin=True),
        "forward_kl": FDivergence(forward_kl_score),
        "js_divergence": FDivergence(js_divergence_score),
        "alpha_divergence": FDivergence(alpha_divergence_score),
    }
)
"""``f_divergence_type`` -> its :class:`FDivergence`."""


def scores(pair: PairLogps, params: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., B) f-divergence scores (s_w, s_l) of the chosen and rejected log-ratios."""
    score = F_DIVERGENCES[params.f_divergence_type].score
    alpha = params.f_alpha_divergence_coef
    return score(pair.chosen_logratios, alpha), score(pair.rejected_logratios, alpha)


def score_margin(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """(..., B) z = s_w − s_l; with ``reverse_kl`` the DPO logit (ℓθ(y_w) − ℓθ(y_l)) −
    (ℓ_ref(y_w) − ℓ_ref(y_l))."""
    if F_DIVERGENCES[params.f_divergence_type].dpo_margin:
        policy = pair.policy_chosen - pair.policy_rejected
        return policy - (pair.ref_chosen - pair.ref_rejected)
    chosen, rejected = scores(pair, params)
    return chosen - rejected
