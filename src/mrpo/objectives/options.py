"""Domain checks of the objective's options, and of the combinations that cannot work.

Each check raises :class:`~mrpo.errors.OptionError` naming the option (the config layer turns
it into the ``loss.<option>`` key). Called by :meth:`~mrpo.objectives.ObjectiveConfig.check`
when :func:`~mrpo.objectives.get_objective` builds an objective, so one that exists has usable
options.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mrpo.errors import OptionError
from mrpo.objectives.aggregation import AGGREGATIONS
from mrpo.objectives.loss_types import F_DIVERGENCES, LOSS_TYPES, SMOOTHED_LOSS_TYPES, LossParams

HARMONIC_PAIRINGS: tuple[str, ...] = ("general", "official")
"""Accepted ``harmonic_pairing`` values of MRPO (see :func:`.reference.pair_weights`)."""


def check_real(name: str, value: object) -> None:
    """Raise OptionError unless ``value`` is a finite real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OptionError(name, f"option {name!r} must be a finite number, got {value!r}")


def check_range(name: str, value: object, low: float, high: float | None, text: str) -> None:
    """Raise OptionError unless ``value`` is a finite number in [low, high] (``text`` says it)."""
    check_real(name, value)
    assert isinstance(value, (int, float))
    if value < low or (high is not None and value > high):
        raise OptionError(name, f"option {name!r} must be {text}, got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raise OptionError unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise OptionError(
            name, f"unknown option {name!r}={value!r}; expected one of {list(choices)}"
        )


def loss_type_names(loss_type: Any) -> tuple[str, ...]:
    """``loss_type`` as a tuple of registered names (a name, or a non-empty list of them).

    Raises:
        OptionError: (``loss_type``) for an unknown, repeated or missing name.
    """
    if isinstance(loss_type, str):
        names: tuple[Any, ...] = (loss_type,)
    elif isinstance(loss_type, (list, tuple)):
        names = tuple(loss_type)
    else:
        raise OptionError(
            "loss_type", f"option 'loss_type' must be a name or a list of names, got {loss_type!r}"
        )
    if not names:
        raise OptionError("loss_type", "option 'loss_type' must name at least one loss type")
    for name in names:
        check_choice("loss_type", name, tuple(LOSS_TYPES))
    if len(set(names)) != len(names):
        raise OptionError("loss_type", f"option 'loss_type' names a loss type twice: {names}")
    return names


def loss_weight_values(loss_weights: Any, count: int) -> tuple[float, ...]:
    """The loss types' weights: ``loss_weights`` checked against ``count`` types, or all 1.0.

    Raises:
        OptionError: (``loss_weights``) for a wrong length, a negative or non-finite entry,
            or all zeros.
    """
    if loss_weights is None:
        return (1.0,) * count
    if not isinstance(loss_weights, (list, tuple)) or len(loss_weights) != count:
        raise OptionError(
            "loss_weights",
            f"option 'loss_weights' must be a list of {count} numbers, one per loss_type, "
            f"got {loss_weights!r}",
        )
    for value in loss_weights:
        check_range("loss_weights", value, 0.0, None, "non-negative")
    if not any(value > 0 for value in loss_weights):
        raise OptionError("loss_weights", "option 'loss_weights' must not be all zero")
    return tuple(float(value) for value in loss_weights)


def check_loss_params(names: tuple[str, ...], params: LossParams, length_normalize: bool) -> None:
    """The loss parameters' domains and their combinations with the chosen loss types."""
    check_range("label_smoothing", params.label_smoothing, 0.0, 0.5, "in [0, 0.5]")
    if params.label_smoothing > 0 and not set(names) & SMOOTHED_LOSS_TYPES:
        raise OptionError(
            "label_smoothing",
            f"option 'label_smoothing' applies to loss_type in {sorted(SMOOTHED_LOSS_TYPES)} "
            f"only, got loss_type={'|'.join(names)!r} with "
            f"label_smoothing={params.label_smoothing!r}",
        )
    for name in names:
        check = LOSS_TYPES[name].check
        problem = None if check is None else check(params)
        if problem is not None:
            raise OptionError("label_smoothing", f"loss_type={name!r} {problem}")
    check_choice("f_divergence_type", params.f_divergence_type, tuple(F_DIVERGENCES))
    plain = [n for n in names if not LOSS_TYPES[n].f_divergence]
    if params.f_divergence_type != "reverse_kl" and plain:
        raise OptionError(
            "f_divergence_type",
            f"option 'f_divergence_type'={params.f_divergence_type!r} does not apply to "
            f"loss_type {plain} (not a function of the reward margin); use 'reverse_kl'",
        )
    check_range("f_alpha_divergence_coef", params.f_alpha_divergence_coef, 0.0, 1.0, "in [0, 1]")
    check_range("discopop_tau", params.discopop_tau, 0.0, None, "> 0")
    if params.discopop_tau == 0:
        raise OptionError("discopop_tau", "option 'discopop_tau' must be > 0, got 0")
    check_range("simpo_gamma", params.simpo_gamma, 0.0, None, ">= 0")
    summed = [n for n in names if LOSS_TYPES[n].summed_logps]
    if length_normalize and summed:
        raise OptionError(
            "length_normalize",
            f"loss_type {summed} needs summed log-probs and normalizes by length itself; "
            "set length_normalize=false",
        )


def check_ld_alpha(value: object) -> None:
    """``ld_alpha`` (LD-DPO's weight of the tokens past a pair's shared length): None or in
    [0, 1]."""
    if value is not None:
        check_range("ld_alpha", value, 0.0, 1.0, "in [0, 1], or null (off)")


def check_aggregation(aggregation: object, harmonic_pairing: object) -> None:
    """``aggregation`` (None: DPO's, which combines nothing) and ``harmonic_pairing``, and the
    pairing that needs the harmonic mean."""
    if aggregation is not None:
        check_choice("aggregation", aggregation, tuple(AGGREGATIONS))
    check_choice("harmonic_pairing", harmonic_pairing, HARMONIC_PAIRINGS)
    if harmonic_pairing == "official" and aggregation != "harmonic":
        raise OptionError(
            "harmonic_pairing",
            "option 'harmonic_pairing'='official' pairs weights in the harmonic mean; it needs "
            f"aggregation='harmonic', got aggregation={aggregation!r}",
        )
