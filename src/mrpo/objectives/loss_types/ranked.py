"""AOT (Melnyk et al. 2024, arXiv 2406.05882): distributional alignment via optimal transport.

Both losses sort their quantities over the batch (the last dimension) before pairing them,
so a pair's loss depends on the whole batch (``batch_coupled`` in the registry). Every
function maps a :class:`~.inputs.PairLogps` to (..., B) losses, in sorted order.
"""

from __future__ import annotations

import torch

from mrpo.objectives.loss_types.inputs import LossParams, PairLogps
from mrpo.objectives.loss_types.margin import smoothed_sigmoid


def aot_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """Paired AOT: the smoothed sigmoid of β(sort(ℓθ(y_w) − ℓθ(y_l)) − sort(ℓ_ref(y_w) −
    ℓ_ref(y_l))), each sorted over the batch."""
    policy, _ = torch.sort(pair.policy_chosen - pair.policy_rejected, dim=-1)
    reference, _ = torch.sort(pair.ref_chosen - pair.ref_rejected, dim=-1)
    return smoothed_sigmoid(params.beta * (policy - reference), params.label_smoothing)


def aot_unpaired_loss(pair: PairLogps, params: LossParams) -> torch.Tensor:
    """Unpaired AOT: the smoothed sigmoid of β(sort(u_w) − sort(u_l)), each log-ratio sorted
    over the batch on its own."""
    chosen, _ = torch.sort(pair.chosen_logratios, dim=-1)
    rejected, _ = torch.sort(pair.rejected_logratios, dim=-1)
    return smoothed_sigmoid(params.beta * (chosen - rejected), params.label_smoothing)
