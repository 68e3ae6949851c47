"""From the typed config to the library's cheap objects: the objective, the reference specs.

These functions load nothing (no data, no model): the config checks call them to find
unusable values before anything is loaded, and the training steps call the same functions to
build what they use, so a config that passed the checks builds the same objects. Every option
passed to a library function is built here from a known config key, so an
:class:`~mrpo.errors.OptionError` from the library becomes a :class:`~mrpo.errors.ConfigError`
naming that key.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from omegaconf import ListConfig

from mrpo.config.schema import TrainConfig
from mrpo.errors import ConfigError, OptionError, option_keys
from mrpo.groups.objective import loss_option_keys, weighting_params
from mrpo.objectives import Objective, WeightStrategy, get_objective, get_objective_spec
from mrpo.objectives import make_weighting as _make_weighting
from mrpo.references.spec import ReferenceSpec

# Library option -> config key: ``loss.<option>``, and the two options other groups give.
_LOSS_OPTION_KEYS = {
    **loss_option_keys(),
    "num_refs": "references.num_refs",
    "weighting": "weights.strategy",
}


def selected_references(cfg: TrainConfig) -> list[tuple[int, ReferenceSpec]]:
    """(pool position, entry) of the references the run uses, primary first.

    ``references.select`` names them in order; otherwise they are the first
    ``references.num_refs`` entries of the pool (all when null).

    Raises:
        ConfigError: ``references.select`` names an entry twice or one the pool lacks, or
            ``references.num_refs`` is set as well and disagrees with it.
    """
    refs = cfg.references
    if refs.select is None:
        count = len(refs.pool) if refs.num_refs is None else refs.num_refs
        return list(enumerate(refs.pool[:count]))
    names = [r.name for r in refs.pool]
    unknown = [n for n in refs.select if n not in names]
    if unknown or not refs.select:
        raise ConfigError(
            "references.select", f"names {unknown or 'nothing'}; the pool holds {names}"
        )
    if len(set(refs.select)) != len(refs.select):
        raise ConfigError("references.select", f"names an entry twice: {list(refs.select)}")
    if refs.num_refs is not None and refs.num_refs != len(refs.select):
        raise ConfigError(
            "references.num_refs",
            f"is {refs.num_refs} but references.select names {len(refs.select)}; set one of them",
        )
    return [(names.index(n), refs.pool[names.index(n)]) for n in refs.select]


def num_references(cfg: TrainConfig) -> int:
    """K, the number of references the run uses (:func:`selected_references`)."""
    return len(selected_references(cfg))


def reference_specs(cfg: TrainConfig) -> list[ReferenceSpec]:
    """The K references the run uses; ``loss.length_normalize`` applies to all of them.

    Raises:
        ConfigError: naming ``references.pool.<i>.<field>`` for an unusable entry, or the
            selection (:func:`selected_references`).
    """
    specs = []
    for i, ref in selected_references(cfg):
        spec = replace(ref, length_normalize=ref.length_normalize or cfg.loss.length_normalize)
        try:
            spec.check()
        except OptionError as err:
            raise ConfigError(f"references.pool.{i}.{err.option}", str(err)) from None
        specs.append(spec)
    return specs


def _option_keys(cfg: TrainConfig) -> dict[str, str]:
    params = [f.name for f in fields(cfg.weights) if f.name != "strategy"]
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
        for f in fields(loss)
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
