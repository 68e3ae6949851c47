"""What a run needs from the machine and from its other settings: checked before anything loads.

A GPU accelerator needs CUDA; quantized weights need bitsandbytes with a backend for the
device they run on; an attention kernel must train on the policy's device; DeepSpeed
needs its package and CUDA GPUs; sharded strategies exclude settings that need whole weights
on one rank. Each refusal is a :class:`~mrpo.errors.ConfigError` naming the key to change, so
``mrpo-train`` stops with exit status 2 before it loads data or a model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mrpo.config.schema import TrainConfig
from mrpo.errors import ConfigError, OptionError, option_prefix
from mrpo.groups.references import selected_references
from mrpo.models.attention import check_attention_runs
from mrpo.models.parallel import FSDP, ShardedTraining, make_strategy, wants_cuda
from mrpo.models.quantization import check_runs

# Trainer precisions that cast the whole module (``module.to(dtype)``): quantized weights
# cannot be cast.
_CASTING_PRECISIONS = ("bf16-true", "16-true", "64-true", "transformer-engine")
_MIXED_PRECISIONS = ("bf16-mixed", "16-mixed")


def check_requirements(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first requirement the run does not meet."""
    _check_accelerator(cfg)
    sharding = _check_strategy(cfg)
    _check_mixed_precision_clipping(cfg, sharding)
    _check_policy_quantization(cfg, sharding)
    _check_reference_quantization(cfg)
    _check_attention(cfg)
    if isinstance(sharding, FSDP):
        with option_prefix("trainer.strategy"):
            sharding.check_cpu_streams(cfg.trainer.kwargs())


def _check_accelerator(cfg: TrainConfig) -> None:
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.accelerator",
            f"is {accelerator!r} but this machine has no CUDA GPU (or torch was built without "
            "CUDA); trainer.accelerator=cpu runs the same config on the CPU",
        )


def _check_strategy(cfg: TrainConfig) -> ShardedTraining | None:
    spec = cfg.trainer.strategy
    if not isinstance(spec, Mapping):
        return None
    with option_prefix("trainer.strategy"):
        sharding = make_strategy(spec)
        sharding.check_machine(cfg.trainer.kwargs())
    if sharding.shards_parameters and cfg.eval.tasks:
        raise ConfigError(
            "eval.tasks",
            f"benchmarks during training need the whole weights on rank 0, which "
            f"trainer.strategy.name={sharding.name} shards; set eval=none and score the saved "
            "model with mrpo-eval",
        )
    if cfg.model.compile:
        raise ConfigError(
            "model.compile", f"is not supported with trainer.strategy.name={sharding.name}"
        )
    return sharding


def _check_mixed_precision_clipping(cfg: TrainConfig, sharding: ShardedTraining | None) -> None:
    # Lightning's mixed-precision plugin refuses to clip the gradients of an optimizer that
    # unscales them itself (fused AdamW) -- at the first optimizer step, after every load.
    precision = str(cfg.trainer.precision)
    clipping = float(cfg.trainer.gradient_clip_val or 0.0) > 0
    fused = cfg.optimizer.fused is True
    if precision in _MIXED_PRECISIONS and clipping and sharding is None and fused:
        raise ConfigError(
            "optimizer.fused",
            f"Lightning cannot clip the gradients of a fused optimizer under {precision} "
            "(trainer.gradient_clip_val > 0); set optimizer.fused=false, or "
            "trainer.gradient_clip_val=0",
        )


def _check_policy_quantization(cfg: TrainConfig, sharding: ShardedTraining | None) -> None:
    method = cfg.model.quantization
    if method is None:
        return
    if not cfg.model.lora.enabled:
        raise ConfigError(
            "model.lora.enabled",
            f"model.quantization={method} trains LoRA adapters only; set model.lora.enabled=true",
        )
    if sharding is not None:
        raise ConfigError(
            "model.quantization",
            f"a quantized policy is not supported with trainer.strategy.name={sharding.name}; "
            "use trainer=ddp (each rank holds the quantized policy) or a bf16 policy with LoRA",
        )
    precision = str(cfg.trainer.precision)
    if precision in _CASTING_PRECISIONS:
        raise ConfigError(
            "trainer.precision",
            f"{precision} casts every weight, which quantized weights cannot take; use "
            "bf16-mixed (the quantized layers compute in model.dtype)",
        )
    device = torch.device("cuda" if wants_cuda(cfg.trainer.kwargs()) else "cpu")
    try:
        check_runs(method, device)
    except OptionError as err:
        raise ConfigError("model.quantization", str(err)) from None


def _check_reference_quantization(cfg: TrainConfig) -> None:
    # References run on this rank's GPU when there is one (mrpo.references.ReferenceEnsemble).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for i, spec in selected_references(cfg):
        if spec.quantization is None:
            continue
        try:
            check_runs(spec.quantization, device)
        except OptionError as err:
            raise ConfigError(f"references.pool.{i}.quantization", str(err)) from None


def _check_attention(cfg: TrainConfig) -> None:
    name = cfg.model.attn_implementation
    if name is None:
        return
    device = torch.device("cuda" if wants_cuda(cfg.trainer.kwargs()) else "cpu")
    try:
        check_attention_runs(name, device)
    except OptionError as err:
        raise ConfigError("model.attn_implementation", str(err)) from None
