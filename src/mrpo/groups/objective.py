"""The ``loss`` and ``weights`` groups built into the objective, with K from ``references``.

Their settings are the library's: ``loss`` is :class:`mrpo.objectives.LossConfig` (every field
but ``name`` an option of :func:`mrpo.objectives.get_objective` of the same name, its key
``loss.<option>``), ``weights`` is
:class:`~mrpo.objectives.weighting.registry.WeightsConfig` (``strategy`` and the parameters
every registered strategy declares, its keys ``weights.<param>``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from mrpo.errors import ConfigError, option_keys
from mrpo.groups.references import num_references
from mrpo.objectives import (
    LossConfig,
    Objective,
    ObjectiveConfig,
    WeightStrategy,
    get_objective,
    get_objective_spec,
    make_weighting,
)
from mrpo.objectives.weighting.registry import weighting_params

if TYPE_CHECKING:
    from mrpo.config.schema import TrainConfig

__all__ = ["build_objective", "build_weighting"]

# Library option -> config key: ``loss.<option>``, and the two options other groups give.
_LOSS_OPTION_KEYS = {
    **{f.name: f"loss.{f.name}" for f in dataclasses.fields(LossConfig)},
    "num_refs": "references.num_refs",
    "weighting": "weights.strategy",
}


def _option_keys(cfg: TrainConfig) -> dict[str, str]:
    params = [f.name for f in dataclasses.fields(cfg.weights) if f.name != "strategy"]
    return {**_LOSS_OPTION_KEYS, **{p: f"weights.{p}" for p in params}}


def build_weighting(cfg: TrainConfig) -> WeightStrategy:
    """The weight strategy of ``weights`` (its parameters checked by the strategy itself).

    Raises:
        ConfigError: naming ``weights.strategy`` or the ``weights.<param>`` that is unusable.
    """
    with option_keys(_option_keys(cfg), "weights"):
        return make_weighting(cfg.weights.strategy, **weighting_params(cfg.weights))


def build_objective(cfg: TrainConfig) -> Objective:
    """The configured objective, its weighting built and checked against K.

    DPO takes no weighting or CTRO options; a null option is the objective's own default.

    Raises:
        ConfigError: naming the key of the first unusable value (``loss.*``, ``weights.*``,
            ``references.num_refs``).
    """
    loss = cfg.loss
    with option_keys(_LOSS_OPTION_KEYS, "loss"):
        spec = get_objective_spec(loss.name)
    if loss.aggregation is not None and "aggregation" not in spec.options:
        raise ConfigError(
            "loss.aggregation",
            f"does not apply to loss={loss.name!r}, which uses reference 0 only; "
            "use loss=mrpo or loss=multi_dpo to aggregate references",
        )
    options: dict[str, Any] = {
        f.name: getattr(loss, f.name)
        for f in dataclasses.fields(ObjectiveConfig)
        if f.name in spec.options
    }
    if spec.weighted:
        options["weighting"] = build_weighting(cfg)
    # The strategy checks its parameters against K here (fixed_weights' length, ...).
    with option_keys(_option_keys(cfg), "loss"):
        return get_objective(loss.name, beta=loss.beta, num_refs=num_references(cfg), **options)
