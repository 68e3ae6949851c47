"""The ``callbacks`` group's settings: checkpoints, the learning-rate monitor and any other
Lightning callback named by ``_target_`` under ``extra`` (lightning-hydra-template style:
``+callbacks.extra.early_stop._target_=lightning.pytorch.callbacks.EarlyStopping``).

The throughput monitor, the progress bar, the evaluation callback and a weighting's feedback
loop are added from their own groups (``eval``, ``weights``) by
:func:`mrpo.groups.callbacks.build_callbacks`. The checks raise
:class:`~mrpo.errors.OptionError` naming the setting (``checkpoint.monitor``, ``extra.<name>``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from mrpo.domains import Choice, Flag, Number, Table, Text, setting
from mrpo.errors import OptionError
from mrpo.training.targets import import_target

__all__ = [
    "CallbacksConfig",
    "CheckpointConfig",
    "build_extra_callbacks",
    "check_callbacks",
    "checkpoint_callbacks",
]


@dataclass
class CheckpointConfig:
    """``last.ckpt`` and the best checkpoints by a validation (or evaluation) metric."""

    monitor: str | None = setting("val/policy_margin_accuracy", Text(nullable=True))
    mode: str = setting("max", Choice(["min", "max"]))
    save_last: bool = setting(True, Flag())
    save_top_k: int = setting(1, Number(int, ge=-1))  # -1: every validation; 0: none
    every_n_train_steps: int | None = setting(None, Number(int, ge=1, nullable=True))


@dataclass
class CallbacksConfig:
    """Checkpoints (null: none), the learning-rate monitor, and other callbacks by name."""

    checkpoint: CheckpointConfig | None = field(default_factory=CheckpointConfig)
    lr_monitor: bool = setting(True, Flag())
    # name -> {_target_: a Lightning Callback class, and its keyword arguments}
    extra: dict[str, Any] = setting({}, Table())


def check_callbacks(
    cfg: CallbacksConfig, logged: Collection[str], eval_tasks: Sequence[str]
) -> None:
    """The monitored metric is one the run logs (``logged``: validation's names; evaluation
    logs ``eval/<task>/<metric>``), and every extra callback builds.

    Raises:
        OptionError: naming ``checkpoint.monitor`` or ``extra.<name>``.
    """
    monitor = cfg.checkpoint.monitor if cfg.checkpoint is not None else None
    from_eval = str(monitor).split("/")[:2] in [["eval", t] for t in eval_tasks]
    if monitor is not None and monitor not in logged and not from_eval:
        raise OptionError(
            "checkpoint.monitor",
            f"{monitor!r} is never logged by this run; validation logs "
            f"{sorted(m for m in logged if m.startswith('val/'))}"
            + (
                f", evaluation logs eval/<task>/<metric> for {list(eval_tasks)}"
                if eval_tasks
                else ""
            ),
        )
    build_extra_callbacks(cfg)


def build_extra_callbacks(cfg: CallbacksConfig) -> list[Callback]:
    """The callbacks of ``extra``, each instantiated from its ``_target_``."""
    import hydra

    built = []
    for name, spec in cfg.extra.items():
        key = f"extra.{name}"
        if not (isinstance(spec, Mapping) and spec.get("_target_")):
            raise OptionError(f"{key}._target_", "is missing: name a Lightning Callback class")
        target = import_target(spec["_target_"], f"{key}._target_")
        if not (isinstance(target, type) and issubclass(target, Callback)):
            raise OptionError(
                f"{key}._target_", f"{spec['_target_']} is not a Lightning Callback class"
            )
        try:
            built.append(hydra.utils.instantiate(dict(spec)))
        except Exception as err:  # bad arguments
            raise OptionError(key, f"cannot instantiate {spec['_target_']}: {err}") from None
    return built


def checkpoint_callbacks(ckpt: CheckpointConfig, dirpath: Path) -> list[Callback]:
    """``last.ckpt`` (resumable, periodic) and the best checkpoints by the monitored metric.

    Two callbacks, because a monitoring ``ModelCheckpoint`` defers every save until the
    monitored validation metric exists: a run killed in its first epoch would have no
    checkpoint at all. ``last.ckpt`` is written every ``every_n_train_steps`` steps (if set)
    and at the end of every epoch, whatever the metrics (:class:`LastCheckpoint`);
    ``best-step_<n>.ckpt`` files keep the ``save_top_k`` best validations.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mrpo.training.checkpointing import BEST_FILENAME, LastCheckpoint

    callbacks: list[Callback] = []
    if ckpt.save_last:
        callbacks.append(LastCheckpoint(dirpath, ckpt.every_n_train_steps))
    if ckpt.save_top_k != 0 and ckpt.monitor:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(dirpath),
                monitor=ckpt.monitor,
                mode=ckpt.mode,
                save_top_k=ckpt.save_top_k,
                save_last=False,
                filename=BEST_FILENAME,
                auto_insert_metric_name=False,  # no "=" in the name: pass it as it is
            )
        )
    return callbacks
