"""From the typed config to the library's cheap objects: the objective, the reference specs.

These functions load nothing (no data, no model): the config checks call them to find
unusable values before anything is loaded, and the training steps call the same functions to
build what they use, so a config that passed the checks builds the same objects. Every option
passed to a library function is built here from a known config key, so an
:class:`~mrpo.errors.OptionError` from the library becomes a :class:`~mrpo.errors.ConfigError`
naming that key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from mrpo.config.schema import TrainConfig
from mrpo.errors import ConfigError, OptionError
from mrpo.objectives import Objective, WeightStrategy, get_objective, get_objective_spec
from mrpo.objectives import make_weighting as _make_weighting
from mrpo.references.spec import ReferenceSpec

# Library option -> config key, for the options that are not the weighting's own parameters.
_LOSS_OPTION_KEYS = {
    "name": "loss.name",
    "beta": "loss.beta",
    "loss_type": "loss.loss_type",
    "label_smoothing": "loss.label_smoothing",
    "ctro": "loss.ctro",
    "epsilon": "loss.epsilon",
    "adaptive_epsilon": "loss.adaptive_epsilon",
    "harmonic_pairing": "loss.harmonic_pairing",
    "num_refs": "references.num_refs",
    "weighting": "weights.strategy",
}
STRATEGY_KEY = "strategy"
"""The key of ``weights`` that names the strategy; every other key is one of its parameters."""


@contextmanager
def option_keys(keys: Mapping[str, str], default: str) -> Iterator[None]:
    """Turn an :class:`OptionError` into a :class:`ConfigError` for the option's config key
    (``keys[option]``, else ``default``)."""
    try:
        yield
    except OptionError as err:
        raise ConfigError(keys.get(err.option, default), str(err)) from None


def num_references(cfg: TrainConfig) -> int:
    """K, the number of references the run uses (the first ``num_refs`` of the pool)."""
    pool = len(cfg.references.pool)
    return pool if cfg.references.num_refs is None else cfg.references.num_refs


def reference_specs(cfg: TrainConfig) -> list[ReferenceSpec]:
    """The first K references of the pool; ``loss.length_normalize`` applies to all of them.

    Raises:
        ConfigError: naming ``references.pool.<i>.<field>`` for an unusable entry.
    """
    specs = []
    for i, ref in enumerate(cfg.references.pool[: num_references(cfg)]):
        spec = replace(ref, length_normalize=ref.length_normalize or cfg.loss.length_normalize)
        try:
            spec.check()
        except OptionError as err:
            raise ConfigError(f"references.pool.{i}.{err.option}", str(err)) from None
        specs.append(spec)
    return specs


def weighting_params(cfg: TrainConfig) -> dict[str, Any]:
    """The ``weights`` keys other than ``strategy``: the strategy's parameters."""
    return {k: v for k, v in cfg.weights.items() if k != STRATEGY_KEY}


def _option_keys(cfg: TrainConfig) -> dict[str, str]:
    return {**_LOSS_OPTION_KEYS, **{p: f"weights.{p}" for p in weighting_params(cfg)}}


def build_weighting(cfg: TrainConfig) -> WeightStrategy:
    """The weight strategy of ``weights`` (its parameters checked by the strategy itself).

    Raises:
        ConfigError: naming ``weights.strategy`` or the ``weights.<param>`` that is unusable.
    """
    with option_keys(_option_keys(cfg), "weights"):
        return _make_weighting(cfg.weights.get(STRATEGY_KEY, "uniform"), **weighting_params(cfg))


def loss_options(cfg: TrainConfig) -> dict[str, Any]:
    """The objective's keyword options from the ``loss`` group, those it accepts.

    DPO takes no weighting or CTRO options; ``None`` means "the objective's own default".
    """
    loss = cfg.loss
    candidates = {
        "loss_type": loss.loss_type,
        "label_smoothing": loss.label_smoothing,
        "ctro": loss.ctro,
        "epsilon": loss.epsilon,
        "adaptive_epsilon": loss.adaptive_epsilon,
        "harmonic_pairing": loss.harmonic_pairing,
    }
    with option_keys(_LOSS_OPTION_KEYS, "loss"):
        accepted = get_objective_spec(loss.name).options
    return {k: v for k, v in candidates.items() if k in accepted and v is not None}


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
