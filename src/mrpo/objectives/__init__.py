"""Preference objectives against one or many reference models: DPO, multi-DPO and MRPO.

Usage::

    from mrpo.objectives import get_objective

    objective = get_objective("mrpo", beta=0.1)        # or "dpo", "multi_dpo"
    out = objective(policy_chosen, policy_rejected,    # (B,) response log-probs
                    ref_chosen, ref_rejected)          # (K, B), row 0 = primary reference
    out.losses.mean().backward()

Modules: :mod:`~mrpo.objectives.losses` (DPO-family losses and the three objectives),
:mod:`~mrpo.objectives.reference` (CTRO clipping, harmonic virtual reference),
:mod:`~mrpo.objectives.weighting` (weight formulas), :mod:`~mrpo.objectives.strategies` and
:mod:`~mrpo.objectives.bandit` (weight strategy objects), :mod:`~mrpo.objectives.registry`.
"""

from mrpo.objectives.bandit import ThompsonSampling
from mrpo.objectives.losses import (
    LOSS_FUNCTIONS,
    dpo_loss,
    dpo_objective,
    mrpo_objective,
    multi_dpo_objective,
    preference_losses,
)
from mrpo.objectives.objective import Objective, ObjectiveSpec
from mrpo.objectives.reference import (
    adaptive_epsilons,
    apply_ctro,
    ctro_clip,
    geometric_reference,
    harmonic_reference,
    pair_weights,
)
from mrpo.objectives.registry import (
    OBJECTIVES,
    WEIGHTINGS,
    available_objectives,
    available_weightings,
    get_objective,
    get_objective_spec,
    make_weighting,
)
from mrpo.objectives.strategies import (
    ARWCWeights,
    FixedWeights,
    PrimaryReference,
    SlidingWindowARWC,
    UniformWeights,
    VAWWeights,
    VDWWeights,
    WeightStrategy,
)
from mrpo.objectives.types import ObjectiveConfig, ObjectiveOutput
from mrpo.objectives.weighting import (
    arwc_weights,
    mean_token_margins,
    reference_margins,
    vaw_weights,
    vdw_weights,
)

__all__ = [
    "LOSS_FUNCTIONS",
    "OBJECTIVES",
    "WEIGHTINGS",
    "ARWCWeights",
    "FixedWeights",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "ObjectiveSpec",
    "PrimaryReference",
    "SlidingWindowARWC",
    "ThompsonSampling",
    "UniformWeights",
    "VAWWeights",
    "VDWWeights",
    "WeightStrategy",
    "adaptive_epsilons",
    "apply_ctro",
    "arwc_weights",
    "available_objectives",
    "available_weightings",
    "ctro_clip",
    "dpo_loss",
    "dpo_objective",
    "geometric_reference",
    "get_objective",
    "get_objective_spec",
    "harmonic_reference",
    "make_weighting",
    "mean_token_margins",
    "mrpo_objective",
    "multi_dpo_objective",
    "pair_weights",
    "preference_losses",
    "reference_margins",
    "vaw_weights",
    "vdw_weights",
]
