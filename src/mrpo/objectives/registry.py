"""Registries of objectives and weight strategies, and the factory the trainer calls.

``get_objective(name, beta=..., **options)`` is the one place that turns a config name into an
objective: the rest of the code asks the returned object (or its :class:`ObjectiveSpec`) what
it needs instead of testing names.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from mrpo.objectives.bandit import ThompsonSampling
from mrpo.objectives.losses import dpo_objective, mrpo_objective, multi_dpo_objective
from mrpo.objectives.objective import Objective, ObjectiveSpec
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
from mrpo.objectives.types import ObjectiveConfig

WEIGHTINGS: Mapping[str, type[WeightStrategy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            UniformWeights,
            FixedWeights,
            ARWCWeights,
            VDWWeights,
            VAWWeights,
            SlidingWindowARWC,
            ThompsonSampling,
            PrimaryReference,
        )
    }
)
"""``weighting`` option value -> strategy class."""

WEIGHTING_PARAMS: frozenset[str] = frozenset(p for cls in WEIGHTINGS.values() for p in cls.params)
"""Every strategy parameter accepted as a keyword option (``fixed_weights``, ``prior``, ...)."""

_DPO_OPTIONS = frozenset({"loss_type", "label_smoothing"})
_MULTI_OPTIONS = (
    _DPO_OPTIONS | {"weighting", "ctro", "epsilon", "adaptive_epsilon"} | WEIGHTING_PARAMS
)

OBJECTIVES: Mapping[str, ObjectiveSpec] = MappingProxyType(
    {
        "dpo": ObjectiveSpec(
            name="dpo",
            function=dpo_objective,
            description="DPO against reference 0 (other references are ignored)",
            min_refs=1,
            max_refs=1,
            weighted=False,
            options=_DPO_OPTIONS,
        ),
        "multi_dpo": ObjectiveSpec(
            name="multi_dpo",
            function=multi_dpo_objective,
            description="α-weighted sum of per-reference DPO losses (optional CTRO)",
            options=_MULTI_OPTIONS,
            defaults=MappingProxyType({"weighting": "arwc", "ctro": False}),
        ),
        "mrpo": ObjectiveSpec(
            name="mrpo",
            function=mrpo_objective,
            description="DPO against the harmonic-mean virtual reference, with CTRO",
            options=_MULTI_OPTIONS | {"harmonic_pairing"},
            defaults=MappingProxyType({"weighting": "arwc", "ctro": True}),
        ),
    }
)
"""Objective name -> :class:`ObjectiveSpec`."""


def available_objectives() -> tuple[str, ...]:
    """Names accepted by :func:`get_objective`."""
    return tuple(OBJECTIVES)


def available_weightings() -> tuple[str, ...]:
    """Values accepted by the ``weighting`` option."""
    return tuple(WEIGHTINGS)


def get_objective_spec(name: str) -> ObjectiveSpec:
    """The registry entry of objective ``name``; ValueError listing the names if unknown."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown objective {name!r}; expected one of {list(available_objectives())}"
        ) from None


def make_weighting(weighting: str | WeightStrategy, **params: Any) -> WeightStrategy:
    """Build a weight strategy from its name and parameters (or pass an instance through).

    Raises:
        ValueError: for an unknown name, or a parameter the strategy does not take.
    """
    if isinstance(weighting, WeightStrategy):
        if params:
            raise ValueError(
                f"options {sorted(params)} cannot be combined with a weighting object; "
                "pass them to its constructor"
            )
        return weighting
    if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
        raise ValueError(
            f"unknown option 'weighting'={weighting!r}; expected one of {list(WEIGHTINGS)}"
        )
    cls = WEIGHTINGS[weighting]
    unused = sorted(set(params) - set(cls.params))
    if unused:
        raise ValueError(
            f"option(s) {unused} do not apply to weighting {weighting!r} "
            f"(it takes: {list(cls.params) or 'no options'})"
        )
    return cls(**params)


def get_objective(
    name: str, *, beta: float = 0.1, num_refs: int | None = None, **options: Any
) -> Objective:
    """Build the objective ``name`` with its options.

    Args:
        name: one of :func:`available_objectives`: ``"dpo"``, ``"multi_dpo"``, ``"mrpo"``.
            ``"dpo"`` uses reference 0 only: with K > 1 rows the others are ignored, and it
            takes no weighting options and no explicit weights.
        beta: KL temperature β > 0.
        num_refs: K, if known, to check the options against it now (e.g. the length of
            ``fixed_weights``, K = 2 for the official pairing) and to size Thompson sampling.
        **options: keyword options accepted by the objective (``spec.options``):
            ``loss_type`` ("sigmoid" | "ipo" | "hinge"), ``label_smoothing`` (sigmoid only);
            multi_dpo and mrpo also take ``weighting`` (:func:`available_weightings` or a
            strategy object; default "arwc"), its parameters (``fixed_weights``, ``window``,
            ``prior``, ``seed``), ``ctro`` (default True for mrpo, False for multi_dpo),
            ``epsilon`` (0.1), ``adaptive_epsilon`` (True); mrpo also ``harmonic_pairing``
            ("general" | "official").

    Raises:
        ValueError: naming the objective or option that is unknown or invalid.
    """
    spec = get_objective_spec(name)
    unknown = sorted(set(options) - spec.options)
    if unknown:
        raise ValueError(
            f"objective {name!r} does not accept option(s) {unknown}; "
            f"accepted: {sorted(spec.options)}"
        )
    merged = {**spec.defaults, **options}
    weighting = merged.pop("weighting", None)
    params = {key: merged.pop(key) for key in WEIGHTING_PARAMS if key in merged}
    config = ObjectiveConfig(beta=beta, **merged)
    strategy = make_weighting(weighting, **params) if spec.weighted else PrimaryReference()
    objective = Objective(spec, config, strategy)
    if num_refs is not None:
        objective.check_num_refs(num_refs)
    return objective
