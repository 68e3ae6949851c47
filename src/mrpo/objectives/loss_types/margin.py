"""Loss types of the margin z = s_w − s_l (the f-divergence scores of the two log-ratios).

With ``reverse_kl`` (the default) z is DPO's logit (ℓθ(y_w) − ℓθ(y_l)) − (ℓ_ref(y_w) −
ℓ_ref(y_l)); h = βz. Every function maps a :class:`~.inputs.PairLogps` to (..., B) losses.
Sources are in :mod:`mrpo.objectives.loss_types` and docs/objectives.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mrpo.objectives.loss_types.inputs import LossParams, PairLogps, score_margin, scores


def smoothed_sigmoid(h: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−(1−ε)·log σ(h) − ε·log σ(−h): the logistic loss with conservative label smoothing."""
    return -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)


def sigmoid_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """DPO: −(1−ε)·log σ(βz) − ε·log σ(−βz) (ε = 0: DPO; ε > 0: conservative DPO)."""
    return smoothed_sigmoid(params.beta * score_margin(pair, params), params.label_smoothing)


def hinge_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """SLiC / RSO hinge: max(0, 1 − βz)."""
    return torch.relu(1.0 - params.beta * score_margin(pair, params))


def ipo_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """IPO (Eq. 17): (z − 1/(2β))², on the log-probs as given (summed unless the run
    length-normalizes them; TRL divides by the token counts, see docs/objectives.md)."""
    return (score_margin(pair, params) - 1.0 / (2.0 * params.beta)) ** 2


def exo_pair_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """EXO-pref (Eq. 16): KL(q ‖ p) of q = softmax over {y_w, y_l} of βz against the
    smoothed labels p = (1−ε, ε), ε > 0."""
    h = params.beta * score_margin(pair, params)
    eps = params.label_smoothing
    chosen = torch.sigmoid(h) * (F.logsigmoid(h) - math.log1p(-eps))
    rejected = torch.sigmoid(-h) * (F.logsigmoid(-h) - math.log(eps))
    return chosen + rejected


def robust_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """Robust DPO: (−(1−ε)·log σ(h) + ε·log σ(−h)) / (1 − 2ε), unbiased under a label-flip rate
    ε < 1/2."""
    h = params.beta * score_margin(pair, params)
    eps = params.label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1.0 - 2.0 * eps)


def discopop_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """DiscoPOP (Eq. 5): the log-ratio-modulated blend (1−m)·(−log σ(h)) + m·e^{−h},
    m = σ(h/τ)."""
    h = params.beta * score_margin(pair, params)
    modulation = torch.sigmoid(h / params.discopop_tau)
    return -F.logsigmoid(h) * (1.0 - modulation) + torch.exp(-h) * modulation


def sigmoid_norm_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """Length-normalized DPO: −log σ(β(s_w/|y_w| − s_l/|y_l|)), on summed log-probs."""
    chosen, rejected = scores(pair, params)
    chosen_tokens, rejected_tokens = pair.token_counts()
    return -F.logsigmoid(params.beta * (chosen / chosen_tokens - rejected / rejected_tokens))
