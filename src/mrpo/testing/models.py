"""Tiny random causal language models for tests.

A tiny Llama (hidden size 16-64, 1-2 layers) runs a forward pass in milliseconds on a CPU and
exercises the same code paths (attention masks, position ids, generation, LoRA target modules
``q_proj``/``k_proj``/``v_proj``/``o_proj``) as the packaged SmolLM2, which is also a Llama.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

QUANTIZABLE_HIDDEN_SIZE = 64
"""Width of a tiny Llama whose linear layers every bitsandbytes CPU kernel accepts in 4 bits.

On CPUs with AVX-512-BF16, bitsandbytes repacks a 4-bit weight for inference in blocks of 32
output rows with one scale per 64 inputs (:func:`mrpo.models.quantization.cpu_packed_layout_fits`):
at width 64 (intermediate 128, 4 heads of 16) every layer fills whole blocks, so tests take the
same 4-bit code path as real models on whatever CPU runs them."""


def make_tiny_model(
    vocab_size: int,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 256,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaForCausalLM:
    """Build a randomly initialized float32 Llama, identical for identical arguments.

    The weights depend only on ``seed`` (the global torch RNG is left untouched). Dropout is
    zero, the input and output embeddings are untied, and the model is in eval mode.

    Args:
        vocab_size: number of token ids the model accepts and predicts.
        seed: seed of the weight initialization.
        hidden_size: width of the residual stream; must be divisible by ``num_heads``.
        num_layers: number of decoder layers.
        num_heads: number of attention heads (also the number of key/value heads).
        max_position_embeddings: longest sequence the rotary embedding is set up for.
        bos_token_id, eos_token_id, pad_token_id: special token ids stored in the config
            (``generate`` stops at ``eos_token_id``); None leaves them unset.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    # fork_rng keeps the caller's global RNG stream unchanged by building a model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def save_tiny_model(
    directory: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write ``model`` (and ``tokenizer`` if given) as a normal model directory; return it."""
    directory = Path(directory)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
