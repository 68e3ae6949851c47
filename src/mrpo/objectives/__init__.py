"""Preference objectives against one or many reference models: DPO, multi-DPO, MRPO and more.

Usage::

    from mrpo.objectives import get_objective

    objective = get_objective("mrpo", beta=0.1)        # or "dpo", "multi_dpo"
    out = objective(policy_chosen, policy_rejected,    # (B,) response log-probs
                    ref_chosen, ref_rejected)          # (K, B), row 0 = primary reference
    out.losses.mean().backward()

Modules (each a pure-function layer, except the small configured objects):

- :mod:`~mrpo.objectives.loss_types`: the loss types (``loss_type``, TRL's menu and SimPO),
  one function and one registry entry each;
- :mod:`~mrpo.objectives.virtual_reference`: CTRO clipping and the pooled references;
- :mod:`~mrpo.objectives.aggregation`: how K references combine (``aggregation``);
- :mod:`~mrpo.objectives.options`: the options' domains and refused combinations;
- :mod:`~mrpo.objectives.losses`: the objectives as pure functions;
- :mod:`~mrpo.objectives.weighting`: weight formulas, strategy objects, the Thompson bandit and
  the strategy registry;
- :mod:`~mrpo.objectives.objective`, :mod:`~mrpo.objectives.registry`: the configured
  objective object and the objective registry with its factory :func:`get_objective`.
"""

from mrpo.objectives.aggregation import AGGREGATIONS
from mrpo.objectives.loss_types import F_DIVERGENCES, LOSS_TYPES
from mrpo.objectives.losses import configured_loss, dpo_objective, multi_reference_objective
from mrpo.objectives.objective import Objective, ObjectiveSpec
from mrpo.objectives.registry import (
    OBJECTIVES,
    LossConfig,
    available_objectives,
    get_objective,
    get_objective_spec,
)
from mrpo.objectives.types import ObjectiveConfig, ObjectiveOutput
from mrpo.objectives.virtual_reference import (
    adaptive_epsilons,
    apply_ctro,
    arithmetic_reference,
    ctro_clip,
    geometric_reference,
    harmonic_reference,
    pair_weights,
)
from mrpo.objectives.weighting.bandit import ThompsonSampling
from mrpo.objectives.weighting.formulas import (
    arwc_weights,
    mean_token_margins,
    reference_margins,
    vaw_weights,
    vdw_weights,
)
from mrpo.objectives.weighting.registry import (
    WEIGHTINGS,
    available_weightings,
    make_weighting,
    weighting_class,
)
from mrpo.objectives.weighting.strategies import (
    ARWCWeights,
    FixedWeights,
    PrimaryReference,
    SlidingWindowARWC,
    UniformWeights,
    VAWWeights,
    VDWWeights,
    WeightStrategy,
)

__all__ = [
    "AGGREGATIONS",
    "F_DIVERGENCES",
    "LOSS_TYPES",
    "OBJECTIVES",
    "WEIGHTINGS",
    "ARWCWeights",
    "FixedWeights",
    "LossConfig",
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
    "arithmetic_reference",
    "arwc_weights",
    "available_objectives",
    "available_weightings",
    "configured_loss",
    "ctro_clip",
    "dpo_objective",
    "geometric_reference",
    "get_objective",
    "get_objective_spec",
    "harmonic_reference",
    "make_weighting",
    "mean_token_margins",
    "multi_reference_objective",
    "pair_weights",
    "reference_margins",
    "vaw_weights",
    "vdw_weights",
    "weighting_class",
]
