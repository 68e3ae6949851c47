"""Loss types that read the policy's log-probs only: SFT on the chosen responses and SimPO.

Both need the summed log-probs and the response token counts. The references (and so the
aggregation) do not enter these losses; the result is broadcast to the references' leading
shape so that they combine with any other loss type and aggregation.
"""

from __future__ import annotations

import torch

from mrpo.objectives.loss_types.inputs import LossParams, PairLogps
from mrpo.objectives.loss_types.margin import smoothed_sigmoid


def _broadcast(losses: torch.Tensor, pair: PairLogps) -> torch.Tensor:
    shape = torch.broadcast_shapes(pair.ref_chosen.shape, pair.policy_chosen.shape)
    return losses.expand(shape)


def sft_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """The chosen responses' mean token NLL over the batch, −Σ_b ℓθ(y_w,b) / Σ_b |y_w,b|,
    the same value for every pair (the batch mean is the token-weighted SFT loss)."""
    chosen_tokens, _ = pair.token_counts()
    nll = -pair.policy_chosen.sum() / chosen_tokens.sum()
    return _broadcast(nll.expand(pair.policy_chosen.shape), pair)


def simpo_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """SimPO (Meng et al. 2024, Eq. 6), reference-free: −(1−ε)·log σ(h) − ε·log σ(−h) with
    h = β(ℓθ(y_w)/|y_w| − ℓθ(y_l)/|y_l|) − γ."""
    chosen_tokens, rejected_tokens = pair.token_counts()
    margin = pair.policy_chosen / chosen_tokens - pair.policy_rejected / rejected_tokens
    h = params.beta * margin - params.simpo_gamma
    return _broadcast(smoothed_sigmoid(h, params.label_smoothing), pair)
