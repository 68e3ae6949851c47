"""The ``model`` group's settings (:class:`ModelConfig`), the trainable policy they load
(:func:`load_policy`) and what its architecture must allow (:func:`check_architecture`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from torch.nn import Linear
from transformers import AutoModelForCausalLM, PretrainedConfig

from mrpo.domains import Choice, Flag, Number, Text, setting
from mrpo.errors import OptionError, renamed
from mrpo.models.attention import (
    ATTENTION_IMPLEMENTATIONS,
    check_attention_model,
    check_attention_runs,
)
from mrpo.models.loading import (
    DTYPES,
    compile_policy,
    enable_gradient_checkpointing,
    load_model,
    load_tokenizer,
)
from mrpo.models.lora import ALL_LINEAR, LoraConfig
from mrpo.models.quantization import QUANTIZATIONS, check_runs


@dataclass
class ModelConfig:
    """The policy: a hub id, a local directory or ``packaged:smollm2-135m-instruct``."""

    source: str = setting(MISSING, Text())
    tokenizer: str | None = setting(None, Text(nullable=True))
    chat_template: str | None = setting(None, Text(nullable=True))
    dtype: str = setting("float32", Choice(list(DTYPES)))
    # Recompute activations in backward: less memory.
    gradient_checkpointing: bool = setting(False, Flag())
    compile: bool = setting(False, Flag())  # torch.compile the backbone (docs/scaling.md)
    # The policy's transformers attention (null: its default, sdpa). flex_attention (GPUs):
    # packed rows skip their masked tiles; flash_attention_* take no mask: padded layout.
    attn_implementation: str | None = setting(
        None, Choice(list(ATTENTION_IMPLEMENTATIONS), nullable=True)
    )
    # Log-probs from the last hidden states through the LM head in tiles, without logits
    # (mrpo.logprobs); models it cannot serve exactly keep the logits path on their own.
    fused_lm_head: bool = setting(True, Flag())
    lm_head_chunk_tokens: int = setting(1024, Number(int, ge=1))  # scored tokens per tile
    # Logits path only: rows of logits turned into float32 log-probs at a time (None: all at
    # once); with bf16 logits this bounds the float32 copy, recomputed in backward.
    logprob_chunk_size: int | None = setting(None, Number(int, ge=1, nullable=True))
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Load the linear layers quantized by bitsandbytes (nf4, fp4, int8) and train LoRA
    # adapters on them (QLoRA); null: full precision.
    quantization: str | None = setting(None, Choice(list(QUANTIZATIONS), nullable=True))

    def check(self) -> None:
        """Quantized weights train LoRA adapters only (an :class:`OptionError`)."""
        if self.quantization is not None and not self.lora.enabled:
            raise OptionError(
                "lora.enabled",
                f"model.quantization={self.quantization} trains LoRA adapters only; set "
                "model.lora.enabled=true",
            )

    def check_machine(self, device: torch.device) -> None:
        """What the policy's settings need on ``device``, as an :class:`OptionError`: a
        bitsandbytes backend for quantized weights, and an attention kernel that trains there."""
        if self.quantization is not None:
            with renamed("quantization"):
                check_runs(self.quantization, device)
        if self.attn_implementation is not None:
            with renamed("attn_implementation"):
                check_attention_runs(self.attn_implementation, device)


def model_cache_dir(cache_dir: str | Path) -> Path:
    """Where converted models (the packaged GGUF) are cached, under ``paths.cache_dir``."""
    return Path(cache_dir) / "models"


def load_policy(
    model: ModelConfig, *, cache_dir: str | Path, device: torch.device
) -> tuple[torch.nn.Module, Any]:
    """The trainable policy and its tokenizer (``cache_dir``: :func:`model_cache_dir`)."""
    m = model
    tokenizer = load_tokenizer(
        m.tokenizer or m.source, chat_template=m.chat_template, cache_dir=cache_dir
    )
    policy = load_model(
        m.source,
        dtype=m.dtype,
        cache_dir=cache_dir,
        lora=m.lora,
        trainable=True,
        attn_implementation=m.attn_implementation,
        quantization=m.quantization,
        device=device,
    )
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if m.compile:
        compile_policy(policy)
    policy.train()  # from_pretrained returns eval mode; dropout is already zeroed
    return policy, tokenizer


def check_architecture(model: ModelConfig, config: PretrainedConfig) -> None:
    """What transformers would refuse only while loading: the family's support of
    ``attn_implementation``; LoRA ``target_modules`` matching no module of ``config``'s model
    (built on the meta device), matched as peft does (the name is or ends with ``.<target>``).

    Raises:
        OptionError: naming ``attn_implementation`` or ``lora.target_modules``.
    """
    if model.attn_implementation is not None:
        check_attention_model(model.attn_implementation, config)
    if not model.lora.enabled:
        return
    with torch.device("meta"):
        modules = dict(AutoModelForCausalLM.from_config(config).named_modules())
    targets = () if model.lora.modules() == (ALL_LINEAR,) else model.lora.modules()
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in modules)]
    if missing:
        linear = {n.rsplit(".", 1)[-1] for n, x in modules.items() if isinstance(x, Linear)}
        raise OptionError(
            "lora.target_modules",
            f"{missing} match no module of {type(config).__name__.removesuffix('Config')} "
            f"({model.source}); its linear layers are named {sorted(linear)}",
        )
