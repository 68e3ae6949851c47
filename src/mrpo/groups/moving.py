"""Config checks of moving references (``references.pool.<i>.source: moving``).

A moving reference is a whole copy of the policy updated from the policy's whole weights after
optimizer steps, and scored live; the combinations that cannot give that are refused here,
before anything loads. Each option's own domain (``update``, ``alpha``, ``every_n_steps``) is
checked by :meth:`mrpo.references.ReferenceSpec.check`.
"""

from __future__ import annotations

from collections.abc import Mapping

from mrpo.config.schema import TrainConfig
from mrpo.errors import ConfigError
from mrpo.groups.objective import build_objective
from mrpo.groups.references import selected_references

SHARDED_NAMES = ("fsdp", "deepspeed")
"""Lightning strategy names (or parts of them) that shard the policy or wrap it in an engine."""


def check_moving_references(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` for a moving reference in a run that cannot update it."""
    moving = [(i, spec) for i, spec in selected_references(cfg) if spec.is_moving]
    if not moving:
        return
    first, _ = moving[0]
    key = f"references.pool.{first}.source"
    if cfg.model.lora.enabled:
        raise ConfigError(
            key,
            "a moving reference follows the policy's whole weights, and this policy trains "
            "LoRA adapters (model.lora.enabled=true); train the full model, or use a static "
            "reference (source: self)",
        )
    strategy = cfg.trainer.strategy
    if isinstance(strategy, Mapping) or any(n in str(strategy).lower() for n in SHARDED_NAMES):
        name = strategy.get("name") if isinstance(strategy, Mapping) else strategy
        raise ConfigError(
            key,
            f"a moving reference is a whole copy of the policy, updated from its whole weights; "
            f"trainer.strategy={name} shards or wraps them and cannot update it; use one device "
            "or trainer=ddp",
        )
    if build_objective(cfg).weighting.fits_on_validation:
        raise ConfigError(
            "weights.strategy",
            f"{cfg.weights.strategy!r} fits the weights once on every reference's "
            f"cached validation log-probs, and {key}=moving is never cached (its log-probs "
            "change as it moves); use an online or fixed weighting",
        )
    if cfg.stage == "cache" and len(moving) == len(selected_references(cfg)):
        raise ConfigError(
            "stage",
            f"stage=cache fills the reference cache, and every reference of this run moves "
            f"({key}=moving, scored live, never cached): there is nothing to cache",
        )
