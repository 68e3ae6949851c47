"""The ``trainer`` group's relations with the other groups, checked before anything loads.

The Trainer's own settings, their domains and what the machine offers them are
:class:`mrpo.training.trainer.TrainerConfig`'s; here are the combinations that fail later:
sharded strategies with settings that need whole weights on one rank, a fused optimizer
clipped under mixed precision, quantized weights under a casting precision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrpo.errors import ConfigError
from mrpo.models.parallel import ShardedTraining

if TYPE_CHECKING:
    from mrpo.config.schema import TrainConfig

# Trainer precisions that cast the whole module (``module.to(dtype)``): quantized weights
# cannot be cast.
_CASTING_PRECISIONS = ("bf16-true", "16-true", "64-true", "transformer-engine")
_MIXED_PRECISIONS = ("bf16-mixed", "16-mixed")


def check_trainer_relations(cfg: TrainConfig, sharding: ShardedTraining | None) -> None:
    """Raise :class:`ConfigError` for a combination of the Trainer (``sharding``: its sharded
    strategy, None without one) and another group that cannot train."""
    name = None if sharding is None else sharding.name
    if sharding is not None and sharding.shards_parameters and cfg.eval.tasks:
        raise ConfigError(
            "eval.tasks",
            f"benchmarks during training need the whole weights on rank 0, which "
            f"trainer.strategy.name={name} shards; set eval=none and score the saved "
            "model with mrpo-eval",
        )
    if sharding is not None and cfg.model.compile:
        raise ConfigError("model.compile", f"is not supported with trainer.strategy.name={name}")
    # Lightning's mixed-precision plugin refuses to clip the gradients of an optimizer that
    # unscales them itself (fused AdamW) -- at the first optimizer step, after every load.
    precision = str(cfg.trainer.precision)
    clipping = float(cfg.trainer.gradient_clip_val or 0.0) > 0
    if precision in _MIXED_PRECISIONS and clipping and sharding is None and cfg.optimizer.fused:
        raise ConfigError(
            "optimizer.fused",
            f"Lightning cannot clip the gradients of a fused optimizer under {precision} "
            "(trainer.gradient_clip_val > 0); set optimizer.fused=false, or "
            "trainer.gradient_clip_val=0",
        )
    if cfg.model.quantization is None:
        return
    if sharding is not None:
        raise ConfigError(
            "model.quantization",
            f"a quantized policy is not supported with trainer.strategy.name={name}; "
            "use trainer=ddp (each rank holds the quantized policy) or a bf16 policy with LoRA",
        )
    if precision in _CASTING_PRECISIONS:
        raise ConfigError(
            "trainer.precision",
            f"{precision} casts every weight, which quantized weights cannot take; use "
            "bf16-mixed (the quantized layers compute in model.dtype)",
        )
