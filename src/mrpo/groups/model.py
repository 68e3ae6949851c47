"""The ``model`` group: the policy, its tokenizer and how it is loaded and scored."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mrpo.domains import Choice, Flag, Number, Text, setting
from mrpo.models import ATTENTION_IMPLEMENTATIONS, DTYPES
from mrpo.models.lora import LoraConfig
from mrpo.models.quantization import QUANTIZATIONS

__all__ = ["ModelConfig"]


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
