"""The ``loss`` and ``weights`` groups: the objective, its options and its weighting.

Every ``loss`` field but ``name`` is an option of :func:`mrpo.objectives.get_objective` of the
same name (its key is ``loss.<option>``); ``weights`` holds ``strategy`` and the parameters
every registered strategy declares with their domains (``WeightStrategy.params``), so a new
strategy adds its keys here without an edit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, ListConfig

from mrpo.domains import AnyOf, Choice, Flag, Items, Number, setting
from mrpo.errors import ConfigError, option_keys
from mrpo.groups.references import num_references
from mrpo.objectives import (
    AGGREGATIONS,
    LOSS_TYPES,
    OBJECTIVES,
    Objective,
    WeightStrategy,
    get_objective,
    get_objective_spec,
)
from mrpo.objectives import make_weighting as _make_weighting
from mrpo.objectives.loss_types import F_DIVERGENCES
from mrpo.objectives.types import HARMONIC_PAIRINGS
from mrpo.objectives.weighting.registry import WEIGHTINGS

if TYPE_CHECKING:
    from mrpo.config.schema import TrainConfig

__all__ = [
    "LossConfig",
    "WeightsConfig",
    "build_objective",
    "build_weighting",
    "loss_option_keys",
    "weighting_params",
]

UNIT = Number(float, ge=0, le=1)
LOSS_TYPE = Choice(lambda: list(LOSS_TYPES))


@dataclass
class LossConfig:
    """The objective (a name in ``mrpo.objectives.OBJECTIVES``) and its options."""

    name: str = setting(MISSING, Choice(lambda: list(OBJECTIVES)))
    beta: float = setting(0.1, Number(float, gt=0))
    # A LOSS_TYPES name, or a list of them combined with loss_weights.
    loss_type: Any = setting("sigmoid", AnyOf((LOSS_TYPE, Items(LOSS_TYPE, min_len=1))))
    loss_weights: list[float] | None = setting(
        None, Items(Number(float, ge=0), min_len=1, nullable=True)
    )
    # How K references combine (AGGREGATIONS); null: the objective's own.
    aggregation: str | None = setting(None, Choice(lambda: list(AGGREGATIONS), nullable=True))
    label_smoothing: float = setting(0.0, Number(float, ge=0, le=0.5))
    f_divergence_type: str = setting("reverse_kl", Choice(lambda: list(F_DIVERGENCES)))
    f_alpha_divergence_coef: float = setting(0.5, UNIT)
    discopop_tau: float = setting(0.05, Number(float, gt=0))
    simpo_gamma: float = setting(0.5, Number(float, ge=0))
    ctro: bool | None = setting(None, Flag(nullable=True))  # None: the objective's own default
    epsilon: float = setting(0.1, UNIT)
    adaptive_epsilon: bool = setting(True, Flag())
    harmonic_pairing: str = setting("general", Choice(HARMONIC_PAIRINGS))
    length_normalize: bool = setting(False, Flag())
    # LD-DPO's α in [0, 1] (TRL's ld_alpha): response tokens past the pair's shared length
    # count α-fold in every log-prob, the policy's and the references'; null (or 1): off.
    ld_alpha: float | None = setting(None, Number(float, ge=0, le=1, nullable=True))


def loss_option_keys() -> dict[str, str]:
    """Library option -> config key, for the objective's options (``loss.<option>``)."""
    return {f.name: f"loss.{f.name}" for f in dataclasses.fields(LossConfig)}


def _weights_fields() -> list[tuple[str, Any, Any]]:
    """``strategy`` and every strategy's parameters (null: the strategy's default)."""
    params: dict[str, Any] = {}
    for cls in WEIGHTINGS.values():
        for name, domain in cls.params.items():
            params.setdefault(name, dataclasses.replace(domain, nullable=True))
    strategy = setting("uniform", Choice(lambda: list(WEIGHTINGS)))
    return [("strategy", str, strategy), *((n, Any, setting(None, d)) for n, d in params.items())]


if TYPE_CHECKING:

    @dataclass
    class WeightsConfig:
        """``strategy`` (a WEIGHTINGS name) and the strategies' parameters."""

        strategy: str = "uniform"

        def __getattr__(self, name: str) -> Any: ...

else:
    WeightsConfig = dataclasses.make_dataclass("WeightsConfig", _weights_fields())
    WeightsConfig.__module__ = __name__
    WeightsConfig.__doc__ = "``strategy`` (a WEIGHTINGS name) and the strategies' parameters."


def weighting_params(weights: WeightsConfig) -> dict[str, Any]:
    """The parameters set (not null) besides ``strategy``, as plain values."""
    given = {f.name: getattr(weights, f.name) for f in dataclasses.fields(weights)}
    return {
        k: list(v) if isinstance(v, list | tuple) else v
        for k, v in given.items()
        if k != "strategy" and v is not None
    }


# Library option -> config key: ``loss.<option>``, and the two options other groups give.
_LOSS_OPTION_KEYS = {
    **loss_option_keys(),
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
        return _make_weighting(cfg.weights.strategy, **weighting_params(cfg.weights))


def loss_options(cfg: TrainConfig) -> dict[str, Any]:
    """The objective's keyword options from the ``loss`` group, those it accepts.

    DPO takes no weighting or CTRO options; ``None`` means "the objective's own default".
    """
    loss = cfg.loss
    # Every loss field but name and beta is an objective option of the same name.
    candidates = {
        f.name: _plain(getattr(loss, f.name))
        for f in dataclasses.fields(loss)
        if f.name not in ("name", "beta")
    }
    with option_keys(_LOSS_OPTION_KEYS, "loss"):
        accepted = get_objective_spec(loss.name).options
    if loss.aggregation is not None and "aggregation" not in accepted:
        raise ConfigError(
            "loss.aggregation",
            f"does not apply to loss={loss.name!r}, which uses reference 0 only; "
            "use loss=mrpo or loss=multi_dpo to aggregate references",
        )
    return {k: v for k, v in candidates.items() if k in accepted and v is not None}


def _plain(value: Any) -> Any:
    """A config list as a Python list (anything else unchanged, for the checks to judge)."""
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else value


def build_objective(cfg: TrainConfig) -> Objective:
    """The configured objective, its weighting built and checked against K.

    Raises:
        ConfigError: naming the key of the first unusable value (``loss.*``, ``weights.*``,
            ``references.num_refs``).
    """
    options = loss_options(cfg)
    with option_keys(_LOSS_OPTION_KEYS, "loss"):
        weighted = get_objective_spec(cfg.loss.name).weighted
    if weighted:
        options["weighting"] = build_weighting(cfg)
    # The strategy checks its parameters against K here (fixed_weights' length, ...).
    with option_keys(_option_keys(cfg), "loss"):
        return get_objective(
            cfg.loss.name, beta=cfg.loss.beta, num_refs=num_references(cfg), **options
        )
