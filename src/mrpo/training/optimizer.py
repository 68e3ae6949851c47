"""The optimizer and its learning-rate schedule (the ``optimizer`` and ``scheduler`` groups): a
torch optimizer class and its arguments, and a ``transformers.get_scheduler`` schedule with
warm-up.

The arguments most optimizers share carry domains; null leaves the class's own default, and
``extra`` takes any other keyword argument of the class. The checks raise
:class:`~mrpo.errors.OptionError` naming the setting (empty: the arguments together).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mrpo.domains import Choice, Flag, Items, Number, Table, Text, setting
from mrpo.errors import OptionError
from mrpo.training.targets import import_target

__all__ = [
    "OptimizerConfig",
    "SchedulerConfig",
    "build_optimizer",
    "check_optimizer",
    "check_scheduler",
]

FRACTION = Number(float, ge=0, lt=1)


def _schedules() -> list[str]:
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


@dataclass
class OptimizerConfig:
    """A ``torch.optim.Optimizer`` class (``_target_``) and its keyword arguments."""

    _target_: str = setting("torch.optim.AdamW", Text())
    lr: float = setting(5.0e-6, Number(float, gt=0))
    weight_decay: float | None = setting(None, Number(float, ge=0, nullable=True))
    betas: list[float] | None = setting(None, Items(FRACTION, min_len=2, max_len=2, nullable=True))
    eps: float | None = setting(None, Number(float, gt=0, nullable=True))
    momentum: float | None = setting(None, Number(float, ge=0, nullable=True))
    # One fused kernel over all parameters (AdamW, Adam, SGD on CPU and GPU).
    fused: bool | None = setting(None, Flag(nullable=True))
    extra: dict[str, Any] = setting({}, Table())

    def kwargs(self) -> dict[str, Any]:
        """The class's keyword arguments: those set (not null) and ``extra``."""
        given = {k: v for k, v in vars(self).items() if k not in ("_target_", "extra")}
        plain = {k: list(v) if isinstance(v, list) else v for k, v in given.items()}
        return {**{k: v for k, v in plain.items() if v is not None}, **dict(self.extra)}


@dataclass
class SchedulerConfig:
    """Learning-rate schedule: a ``transformers.get_scheduler`` name plus warm-up."""

    name: str = setting("cosine", Choice(_schedules))
    warmup_ratio: float = setting(0.1, FRACTION)


def build_optimizer(cfg: OptimizerConfig) -> Callable[..., torch.optim.Optimizer]:
    """``params -> Optimizer``: the class with its arguments bound (plain values, so that a
    checkpoint holding them loads with ``weights_only``)."""
    cls = import_target(cfg._target_, "_target_")
    return functools.partial(cls, **cfg.kwargs())


def check_optimizer(cfg: OptimizerConfig) -> None:
    """The class imports, takes the given arguments and accepts their values (built on one
    dummy parameter)."""
    cls = import_target(cfg._target_, "_target_")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise OptionError("_target_", f"{cfg._target_} is not a torch optimizer")
    accepted = set(inspect.signature(cls).parameters)
    for key in cfg.kwargs():
        if key not in accepted and "kwargs" not in accepted:
            option = f"extra.{key}" if key in cfg.extra else key
            raise OptionError(option, f"is not an argument of {cfg._target_}")
    try:
        build_optimizer(cfg)([torch.nn.Parameter(torch.zeros(1))])
    except Exception as err:  # torch names the value it refuses ("Invalid learning rate")
        raise OptionError("", f"{cfg._target_} refuses these arguments: {err}") from None


def check_scheduler(cfg: SchedulerConfig) -> None:
    """The schedule's name is one ``transformers.get_scheduler`` knows."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        get_scheduler(cfg.name, optimizer, num_warmup_steps=0, num_training_steps=10)
    except Exception as err:
        raise OptionError("name", str(err)) from None
