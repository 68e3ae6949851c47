"""The registry of objectives, and the factory the trainer calls.

``get_objective(name, beta=..., **options)`` is the one place that turns a config name into an
objective: the rest of the code asks the returned object (or its :class:`ObjectiveSpec`) what
it needs instead of testing names. Weight strategies have their own registry
(:mod:`mrpo.objectives.weighting.registry`), loss types theirs
(:mod:`mrpo.objectives.loss_types`).

The multi-reference objectives differ only in their defaults: ``mrpo`` is the ``harmonic``
aggregation with CTRO, ``multi_dpo`` the ``loss_mixture`` without; ``loss.aggregation`` picks
any aggregation for either.

Adding an objective: a pure function with the :data:`~mrpo.objectives.losses.ObjectiveFunction`
signature, an :class:`ObjectiveSpec` entry in :data:`OBJECTIVES`, and a ``conf/loss/<name>.yaml``
with ``name: <name>`` and its options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from omegaconf import MISSING

from mrpo.domains import Choice, setting
from mrpo.errors import OptionError
from mrpo.objectives.losses import dpo_objective, multi_reference_objective
from mrpo.objectives.objective import Objective, ObjectiveSpec
from mrpo.objectives.types import ObjectiveConfig
from mrpo.objectives.weighting.registry import WEIGHTING_PARAMS, make_weighting
from mrpo.objectives.weighting.strategies import PrimaryReference

_OPTIONS = frozenset(f.name for f in fields(ObjectiveConfig)) - {"beta"}
_DPO_OPTIONS = _OPTIONS - {"aggregation", "ctro", "epsilon", "adaptive_epsilon", "harmonic_pairing"}
_MULTI_OPTIONS = _OPTIONS - {"harmonic_pairing"} | {"weighting"} | WEIGHTING_PARAMS

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
            function=multi_reference_objective,
            description="α-weighted sum of per-reference losses (optional CTRO)",
            options=_MULTI_OPTIONS,
            defaults=MappingProxyType(
                {"weighting": "arwc", "ctro": False, "aggregation": "loss_mixture"}
            ),
        ),
        "mrpo": ObjectiveSpec(
            name="mrpo",
            function=multi_reference_objective,
            description="the loss against the harmonic-mean virtual reference, with CTRO",
            options=_MULTI_OPTIONS | {"harmonic_pairing"},
            defaults=MappingProxyType(
                {"weighting": "arwc", "ctro": True, "aggregation": "harmonic"}
            ),
        ),
    }
)
"""Objective name -> :class:`ObjectiveSpec`."""


@dataclass
class LossConfig(ObjectiveConfig):
    """The ``loss`` config group: an objective's options and its ``name`` (:data:`OBJECTIVES`)."""

    name: str = setting(MISSING, Choice(lambda: list(OBJECTIVES)))


def available_objectives() -> tuple[str, ...]:
    """Names accepted by :func:`get_objective`."""
    return tuple(OBJECTIVES)


def get_objective_spec(name: str) -> ObjectiveSpec:
    """The registry entry of objective ``name``.

    Raises:
        OptionError: (option ``name``) when unknown, listing the registered names.
    """
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise OptionError(
            "name", f"unknown objective {name!r}; expected one of {list(available_objectives())}"
        ) from None


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
        **options: keyword options accepted by the objective (``spec.options``; None: the
            objective's default): the fields of :class:`~mrpo.objectives.types.ObjectiveConfig`
            (dpo: not ``aggregation``, ``ctro``, ``epsilon``, ``adaptive_epsilon``; only mrpo
            ``harmonic_pairing``); multi_dpo and mrpo also ``weighting`` (a registered strategy
            name or a strategy object; default "arwc") and its parameters (``fixed_weights``,
            ``window``, ``prior``, ``seed``, ``feedback_size``). Their defaults differ in
            ``aggregation`` ("loss_mixture" for multi_dpo, "harmonic" for mrpo) and ``ctro``.

    Raises:
        OptionError: naming the option that is unknown or invalid (``name`` for an unknown
            objective, ``num_refs`` for a K it cannot use).
    """
    spec = get_objective_spec(name)
    unknown = sorted(set(options) - spec.options)
    if unknown:
        raise OptionError(
            unknown[0],
            f"objective {name!r} does not accept option(s) {unknown}; "
            f"accepted: {sorted(spec.options)}",
        )
    merged = {**spec.defaults, **{k: v for k, v in options.items() if v is not None}}
    weighting = merged.pop("weighting", None)
    params = {key: merged.pop(key) for key in WEIGHTING_PARAMS if key in merged}
    config = ObjectiveConfig(beta=beta, **merged)
    config.check()
    strategy = make_weighting(weighting, **params) if spec.weighted else PrimaryReference()
    objective = Objective(spec, config, strategy)
    if num_refs is not None:  # K taken once: checked, and Thompson sampling's arms sized
        objective.check_num_refs(num_refs)
        strategy.set_num_refs(num_refs)
    return objective
