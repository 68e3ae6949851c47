"""The loss types (``loss.loss_type``): one pure function and one registry entry each.

Every function maps a :class:`~mrpo.objectives.loss_types.inputs.PairLogps` (the policy's
(B,) log-probs and one reference's, or K references', (..., B) log-probs) and the scalar
:class:`~mrpo.objectives.loss_types.inputs.LossParams` to (..., B) losses. An aggregation
(:mod:`mrpo.objectives.aggregation`) decides which reference they see. The menu is TRL 1.16's
``DPOTrainer.loss_type`` plus SimPO; formulas, sources and where mrpo's convention differs
from TRL's are in docs/objectives.md.

Adding a loss type: a function ``(pair, params) -> losses`` and its :class:`LossType` entry in
:data:`LOSS_TYPES`; ``loss.loss_type=<name>`` then selects it, with any aggregation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from mrpo.objectives.loss_types.inputs import F_DIVERGENCES, LossParams, PairLogps
from mrpo.objectives.loss_types.margin import (
    discopop_loss,
    exo_pair_loss,
    hinge_loss,
    ipo_loss,
    robust_loss,
    sigmoid_loss,
    sigmoid_norm_loss,
)
from mrpo.objectives.loss_types.policy_only import sft_loss, simpo_loss
from mrpo.objectives.loss_types.ranked import aot_loss, aot_unpaired_loss
from mrpo.objectives.loss_types.rewards import (
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    nca_pair_loss,
    sppo_hard_loss,
)

LossFunction = Callable[[PairLogps, LossParams], torch.Tensor]
"""(pair log-probs, parameters) -> (..., B) losses."""


def _positive_smoothing(params: LossParams) -> str | None:
    if params.label_smoothing > 0:
        return None
    return "needs label_smoothing > 0 (the EXO paper suggests 1e-3)"


def _smoothing_below_half(params: LossParams) -> str | None:
    if params.label_smoothing < 0.5:
        return None
    return "needs label_smoothing < 0.5 (it divides by 1 − 2·label_smoothing)"


@dataclass(frozen=True)
class LossType:
    """A registered loss type and what it needs.

    Attributes:
        function: the pure :data:`LossFunction`.
        source: where the formula comes from (paper, arXiv id).
        smoothing: takes ``label_smoothing`` (otherwise a non-zero value is refused).
        f_divergence: a function of the f-divergence scores, so ``f_divergence_type`` applies
            (TRL's set); otherwise only ``reverse_kl`` is accepted.
        summed_logps: needs summed (not length-normalized) policy log-probs and the response
            token counts.
        batch_coupled: sorts over the batch, so a pair's loss is not its own (AOT).
        check: an extra condition on the parameters, returning a message when unmet.
    """

    function: LossFunction
    source: str
    smoothing: bool = False
    f_divergence: bool = False
    summed_logps: bool = False
    batch_coupled: bool = False
    check: Callable[[LossParams], str | None] | None = None


LOSS_TYPES: Mapping[str, LossType] = MappingProxyType(
    {
        "sigmoid": LossType(sigmoid_loss, "DPO, arXiv 2305.18290; cDPO", True, True),
        "hinge": LossType(hinge_loss, "SLiC arXiv 2305.10425 / RSO arXiv 2309.06657", False, True),
        "ipo": LossType(ipo_loss, "IPO, arXiv 2310.12036, Eq. 17", False, True),
        "exo_pair": LossType(
            exo_pair_loss, "EXO, arXiv 2402.00856, Eq. 16", True, True, check=_positive_smoothing
        ),
        "nca_pair": LossType(nca_pair_loss, "NCA, arXiv 2402.05369"),
        "robust": LossType(
            robust_loss, "Robust DPO, arXiv 2403.00409", True, True, check=_smoothing_below_half
        ),
        "bco_pair": LossType(bco_pair_loss, "BCO, arXiv 2404.04656 (TRL 1.16's stateless form)"),
        "sppo_hard": LossType(sppo_hard_loss, "SPPO, arXiv 2405.00675, Eq. 4.7, hard P"),
        "aot": LossType(aot_loss, "AOT, arXiv 2406.05882", True, batch_coupled=True),
        "aot_unpaired": LossType(
            aot_unpaired_loss, "AOT, arXiv 2406.05882", True, batch_coupled=True
        ),
        "apo_zero": LossType(apo_zero_loss, "APO, arXiv 2408.06266, Eq. 7"),
        "apo_down": LossType(apo_down_loss, "APO, arXiv 2408.06266, Eq. 8"),
        "discopop": LossType(discopop_loss, "DiscoPOP, arXiv 2406.08414, Eq. 5", False, True),
        "sft": LossType(sft_loss, "NLL of the chosen responses", False, True, summed_logps=True),
        "sigmoid_norm": LossType(
            sigmoid_norm_loss, "length-normalized DPO (TRL)", False, True, summed_logps=True
        ),
        "simpo": LossType(simpo_loss, "SimPO, arXiv 2405.14734, Eq. 6", True, summed_logps=True),
    }
)
"""``loss_type`` -> :class:`LossType`."""

SMOOTHED_LOSS_TYPES = frozenset(name for name, spec in LOSS_TYPES.items() if spec.smoothing)
"""Loss types that take ``label_smoothing``."""

__all__ = [
    "F_DIVERGENCES",
    "LOSS_TYPES",
    "SMOOTHED_LOSS_TYPES",
    "LossFunction",
    "LossParams",
    "LossType",
    "PairLogps",
]
