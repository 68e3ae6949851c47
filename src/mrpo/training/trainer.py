"""The Lightning ``Trainer``: its settings (the ``trainer`` group), the run's Trainer, and the
check that builds Trainers on this machine before anything is loaded.

The common arguments carry domains (epochs, steps, accumulation, clipping, precision, devices,
validation interval); any other ``lightning.Trainer`` argument goes under ``extra`` and is
checked against ``Trainer``'s signature. ``strategy`` is a Lightning strategy name or the
mapping of a sharded strategy (``trainer=fsdp``, ``deepspeed``; :mod:`mrpo.models.parallel`).
Checks raise :class:`~mrpo.errors.OptionError` naming the setting (empty: all of them).
"""

from __future__ import annotations

import inspect
import tempfile
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mrpo.domains import AnyOf, Choice, Flag, Items, Number, Table, setting
from mrpo.errors import OptionError
from mrpo.models.parallel import FSDP, ShardedTraining, make_strategy, wants_cuda
from mrpo.references.sharding import detect_ranks

__all__ = ["TrainerConfig", "build_trainer", "check_trainer", "policy_device"]

# Arguments mrpo always sets itself (its loggers, callbacks, run directory and samplers).
MRPO_SET = ("logger", "callbacks", "default_root_dir", "use_distributed_sampler")


def _precisions() -> list[Any]:
    from lightning.fabric.connector import _PRECISION_INPUT

    def flatten(hint: Any) -> list[Any]:
        args = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Literal:
            return list(args)
        return [v for arg in args for v in flatten(arg)]

    return flatten(_PRECISION_INPUT)


def _accelerators() -> list[str]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]


def _strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


COUNT = Number(int, ge=1)
UNLIMITED = Number(int, ge=1, also=(-1,))  # Lightning's -1: no limit


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer`` (CPU, float32 by default)."""

    accelerator: str = setting("auto", Choice(_accelerators))
    # A number of devices (-1: all), their indices, or "auto".
    devices: Any = setting(1, AnyOf((UNLIMITED, Items(Number(int, ge=0), 1), Choice(["auto"]))))
    num_nodes: int = setting(1, COUNT)
    precision: Any = setting("32-true", Choice(_precisions))
    # A strategy name, or a sharded strategy's mapping (mrpo.models.parallel.STRATEGIES).
    strategy: Any = setting("auto", AnyOf((Choice(_strategies), Table())))
    max_epochs: int | None = setting(1, Number(int, ge=1, also=(-1,), nullable=True))
    max_steps: int = setting(-1, UNLIMITED)
    accumulate_grad_batches: int = setting(1, COUNT)
    gradient_clip_val: float | None = setting(1.0, Number(float, ge=0, nullable=True))
    log_every_n_steps: int = setting(1, COUNT)
    # Validate every N training batches (an int), or at this fraction of an epoch (<= 1.0).
    val_check_interval: Any = setting(
        None, AnyOf((COUNT, Number(float, gt=0, le=1)), nullable=True)
    )
    check_val_every_n_epoch: int | None = setting(1, Number(int, ge=1, nullable=True))
    num_sanity_val_steps: int = setting(0, Number(int, ge=0, also=(-1,)))
    deterministic: Any = setting(False, AnyOf((Flag(), Choice(["warn"]))))
    enable_progress_bar: bool = setting(True, Flag())
    enable_model_summary: bool = setting(True, Flag())
    # Any other lightning.Trainer argument (limit_train_batches, max_time, profiler, ...).
    extra: dict[str, Any] = setting({}, Table())

    def kwargs(self) -> dict[str, Any]:
        """The ``Trainer`` keyword arguments: the modeled ones and ``extra``."""
        modeled = {k: v for k, v in vars(self).items() if k != "extra"}
        return {**modeled, **self.extra}

    def sharding(self) -> ShardedTraining | None:
        """The sharded strategy of a ``strategy`` mapping (None for a strategy name); an
        :class:`OptionError` names the mapping's unusable option (:func:`make_strategy`)."""
        return make_strategy(self.strategy) if isinstance(self.strategy, Mapping) else None

    def check_machine(self) -> ShardedTraining | None:
        """What this machine cannot run, as an :class:`OptionError`: a CUDA accelerator without
        CUDA, a sharded strategy without its packages, devices or (FSDP) CPU streams. Returns
        that strategy (None for a strategy name)."""
        accelerator = str(self.accelerator)
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise OptionError(
                "accelerator",
                f"is {accelerator!r} but this machine has no CUDA GPU (or torch was built "
                "without CUDA); trainer.accelerator=cpu runs the same config on the CPU",
            )
        try:
            sharding = self.sharding()
            if sharding is not None:
                sharding.check_machine(self.kwargs())
            if isinstance(sharding, FSDP):
                sharding.check_cpu_streams(self.kwargs())
        except OptionError as err:
            raise OptionError(".".join(filter(None, ("strategy", err.option))), str(err)) from None
        return sharding

    def check_extra(self) -> None:
        """``extra`` holds only ``Trainer`` arguments mrpo neither models nor sets (else an
        :class:`OptionError` names ``extra.<argument>``)."""
        accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
        modeled = set(TrainerConfig.__dataclass_fields__) - {"extra"}
        for key in self.extra:
            name = f"extra.{key}"
            if key not in accepted:
                raise OptionError(name, "is not a lightning.Trainer argument")
            if key in modeled:
                raise OptionError(name, f"is modeled: set trainer.{key} instead")
            if key in MRPO_SET:
                raise OptionError(
                    name,
                    "is set by mrpo itself (its loggers, callbacks, run "
                    "directory and batch samplers); remove it",
                )


def build_trainer(
    cfg: TrainerConfig,
    callbacks: list[Any],
    loggers: list[Any],
    root_dir: Path,
    strategy: Any = None,
) -> L.Trainer:
    """The run's Trainer: ``cfg``'s arguments, the run's callbacks and loggers, and
    ``strategy`` (a sharded strategy's object) in place of ``cfg.strategy`` when given."""
    from lightning.pytorch.callbacks import Checkpoint

    from mrpo.training.checkpointing import AtomicCheckpointIO

    kwargs = cfg.kwargs()
    if not any(isinstance(c, Checkpoint) for c in callbacks):
        # No checkpoints configured: keep Lightning from adding its default one.
        kwargs["enable_checkpointing"] = False
    if "plugins" not in kwargs and "deepspeed" not in str(kwargs.get("strategy")):
        # DeepSpeed writes its own sharded checkpoint folders; every other strategy's files go
        # through the atomic writer.
        kwargs["plugins"] = [AtomicCheckpointIO()]
    if strategy is not None:
        kwargs["strategy"] = strategy
    return L.Trainer(
        **kwargs,
        # The data module's samplers split batches across ranks themselves.
        use_distributed_sampler=False,
        default_root_dir=str(root_dir),
        logger=loggers,
        callbacks=callbacks,
    )


def check_trainer(cfg: TrainerConfig) -> None:
    """Build Trainers on this machine from ``cfg``, one concern at a time, so that the
    :class:`OptionError` of a refusal names its setting: ``accelerator/devices``, then
    ``precision``, then ``strategy``, then all the arguments (no name). A sharded strategy's
    object is built anew for every Trainer (Lightning binds one to the Trainer that takes it).
    """
    kwargs, sharding = cfg.kwargs(), cfg.sharding()
    quiet = dict.fromkeys(
        ("logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary"), False
    )
    hardware = {k: kwargs[k] for k in ("accelerator", "devices", "num_nodes")}
    precision = {**hardware, "precision": kwargs["precision"]}
    strategy = {**precision, "strategy": kwargs["strategy"]}
    steps = [("accelerator/devices", hardware), ("precision", precision), ("strategy", strategy)]
    for option, subset in [*steps, ("", kwargs)]:
        try:
            if sharding is not None and "strategy" in subset:
                subset = {**subset, "strategy": sharding.strategy(kwargs)}
            with tempfile.TemporaryDirectory() as root:
                L.Trainer(**{**subset, **quiet, "default_root_dir": root})
        except Exception as err:  # Lightning's MisconfigurationException, ValueError, ...
            raise OptionError(option, f"this machine cannot run it: {err}") from None


def policy_device(cfg: TrainerConfig) -> torch.device:
    """Where this process's policy runs: its CUDA device when the Trainer uses CUDA, else CPU.

    Only a quantized policy is loaded there directly; the Trainer moves any other policy.
    """
    if not wants_cuda(cfg.kwargs()):
        return torch.device("cpu")
    return torch.device(f"cuda:{detect_ranks().local_rank}")
