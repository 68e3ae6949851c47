"""The registry of reference-weight strategies: ``weighting`` option value -> strategy class.

Adding a strategy: a :class:`~mrpo.objectives.weighting.strategies.WeightStrategy` subclass in
its own module (``name``, ``params`` and, if the trainer must drive it, ``fits_on_validation``
or ``needs_feedback``), one line in :data:`WEIGHTINGS` below, and a ``conf/weights/<name>.yaml``
with ``strategy: <name>`` and its parameters. The configs' ``weights.<param>`` keys (the
fields of :class:`WeightsConfig`, generated from ``params``), the option names of
:func:`mrpo.objectives.get_objective` and the constructor's keyword arguments are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mrpo.domains import Choice, setting
from mrpo.errors import OptionError, reject_unknown_options
from mrpo.objectives.weighting.bandit import ThompsonSampling
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


def _weights_fields() -> list[tuple[str, Any, Any]]:
    """``strategy`` and every strategy's parameters (null: the strategy's default)."""
    params: dict[str, Any] = {}
    for cls in WEIGHTINGS.values():
        for name, domain in cls.params.items():
            params.setdefault(name, dataclasses.replace(domain, nullable=True))
    strategy = setting("uniform", Choice(lambda: list(WEIGHTINGS)))
    return [("strategy", str, strategy), *((n, Any, setting(None, d)) for n, d in params.items())]


if TYPE_CHECKING:

    @dataclasses.dataclass
    class WeightsConfig:
        """``strategy`` (a WEIGHTINGS name) and the strategies' parameters."""

        strategy: str = "uniform"

        def __getattr__(self, name: str) -> Any: ...

else:
    WeightsConfig = dataclasses.make_dataclass("WeightsConfig", _weights_fields())
    WeightsConfig.__module__ = __name__
    WeightsConfig.__doc__ = "The ``weights`` group: ``strategy`` and every strategy's parameters."


def weighting_params(weights: WeightsConfig) -> dict[str, Any]:
    """The parameters set (not null) besides ``strategy``, as plain values."""
    given = {f.name: getattr(weights, f.name) for f in dataclasses.fields(weights)}
    return {
        k: list(v) if isinstance(v, list | tuple) else v
        for k, v in given.items()
        if k != "strategy" and v is not None
    }


def available_weightings() -> tuple[str, ...]:
    """Values accepted by the ``weighting`` option."""
    return tuple(WEIGHTINGS)


def weighting_class(name: str) -> type[WeightStrategy]:
    """The strategy class registered as ``name``.

    Raises:
        OptionError: (option ``weighting``) for an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name not in WEIGHTINGS:
        raise OptionError(
            "weighting", f"unknown option 'weighting'={name!r}; expected one of {list(WEIGHTINGS)}"
        )
    return WEIGHTINGS[name]


def make_weighting(weighting: str | WeightStrategy, **params: Any) -> WeightStrategy:
    """Build a weight strategy from its name and parameters (or pass an instance through).

    Raises:
        OptionError: for an unknown name (option ``weighting``), a parameter the strategy does
            not take (that parameter), or a parameter value it refuses.
    """
    if isinstance(weighting, WeightStrategy):
        if params:
            raise OptionError(
                sorted(params)[0],
                f"options {sorted(params)} cannot be combined with a weighting object; "
                "pass them to its constructor",
            )
        return weighting
    cls = weighting_class(weighting)
    reject_unknown_options(params, cls.params, f"weighting {weighting!r}")
    return cls(**params)
