"""A trained LoRA policy as one plain model: adapters merged into full-precision weights.

Merging adapters into 4-bit weights rounds the merged weights back to 4 bits, so a quantized
policy is merged into a fresh, unquantized copy of its base weights instead: the adapters
trained on the 4-bit base are copied into that copy, then merged. (The merged model is then a
model the 4-bit policy approximates, which is what evaluation and later training expect.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from mrpo.models.loading import load_model
from mrpo.models.lora import LoraConfig

if TYPE_CHECKING:
    from mrpo.models.policy import ModelConfig


def merged_policy(
    policy: torch.nn.Module,
    *,
    source: str,
    dtype: str,
    lora: LoraConfig,
    quantization: str | None,
    cache_dir: str | Path | None = None,
) -> torch.nn.Module:
    """The policy to save: a peft policy with its adapters merged; any other model as it is.

    Args:
        policy: the trained policy (a peft model when LoRA was trained).
        source, dtype, lora, quantization: the settings the policy was loaded with; with a
            ``quantization`` the base weights are loaded again from ``source`` in ``dtype``,
            unquantized, and the adapters are merged into them.
        cache_dir: the converted-model cache (GGUF sources).
    """
    if not isinstance(policy, PeftModel):
        return policy
    if quantization is None:
        return policy.merge_and_unload()
    base = load_model(source, dtype=dtype, cache_dir=cache_dir, lora=lora, trainable=False)
    assert isinstance(base, PeftModel)  # lora is enabled for every quantized policy
    set_peft_model_state_dict(base, get_peft_model_state_dict(policy))
    return base.merge_and_unload()


def save_policy(
    policy: torch.nn.Module,
    tokenizer: Any,
    settings: ModelConfig,
    target: Path,
    cache_dir: str | Path | None = None,
) -> Path:
    """Save a trained policy and its tokenizer as a transformers model directory ``target``
    (:func:`merged_policy` with the settings it was loaded with)."""
    s = settings
    merged: Any = merged_policy(  # a transformers model
        policy,
        source=s.source,
        dtype=s.dtype,
        lora=s.lora,
        quantization=s.quantization,
        cache_dir=cache_dir,
    )
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
