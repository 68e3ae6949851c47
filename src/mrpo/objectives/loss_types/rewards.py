"""Loss types of the two implicit rewards r_w = β·u_w and r_l = β·u_l taken separately.

u = ℓθ(y) − ℓ_ref(y) is a response's log-ratio. These losses are not functions of the margin
alone, so the f-divergence reparameterization does not apply to them (as in TRL). Every
function maps a :class:`~.inputs.PairLogps` to (..., B) losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mrpo.objectives.loss_types.inputs import LossParams, PairLogps


def nca_pair_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """NCA (pairwise): −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l)."""
    chosen = params.beta * pair.chosen_logratios
    rejected = params.beta * pair.rejected_logratios
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


def bco_pair_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """BCO (pairwise), as TRL 1.16 has it: −log σ(r_w) − log σ(−r_l), without the paper's
    running-mean reward shift δ (stateless; see docs/objectives.md)."""
    chosen = params.beta * pair.chosen_logratios
    rejected = params.beta * pair.rejected_logratios
    return -F.logsigmoid(chosen) - F.logsigmoid(-rejected)


def sppo_hard_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """SPPO with hard win probabilities (P = 1 for y_w, 0 for y_l):
    (u_w − 1/(2β))² + (u_l + 1/(2β))²."""
    half = 0.5 / params.beta
    return (pair.chosen_logratios - half) ** 2 + (pair.rejected_logratios + half) ** 2


def apo_zero_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """APO-zero (Eq. 7): 1 − σ(r_w) + σ(r_l): raise y_w's likelihood, lower y_l's."""
    chosen = params.beta * pair.chosen_logratios
    rejected = params.beta * pair.rejected_logratios
    return (1.0 - torch.sigmoid(chosen)) + torch.sigmoid(rejected)


def apo_down_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """APO-down (Eq. 8): σ(r_w) + 1 − σ(r_w − r_l): lower both, y_l more."""
    chosen = pair.chosen_logratios
    rejected = pair.rejected_logratios
    margin = torch.sigmoid(params.beta * (chosen - rejected))
    return torch.sigmoid(params.beta * chosen) + (1.0 - margin)
