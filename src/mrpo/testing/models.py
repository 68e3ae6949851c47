"""Tiny random causal language models for tests.

A tiny Llama (hidden size 16-64, 1-2 layers) runs a forward pass in milliseconds on a CPU and
exercises the same code paths (attention masks, position ids, generation, LoRA target modules
``q_proj``/``k_proj``/``v_proj``/``o_proj``) as the packaged SmolLM2, which is also a Llama.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

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


def _seeded(build: Callable[[], PreTrainedModel], seed: int) -> PreTrainedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


TINY_FAMILIES: dict[str, Callable[[int, int], PreTrainedModel]] = {
    # rotary positions, untied head
    "llama": lambda vocab, seed: make_tiny_model(vocab, seed=seed),
    # rotary, grouped key/value heads, biases on q/k/v, tied embeddings
    "qwen2": lambda vocab, seed: _seeded(
        lambda: Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                tie_word_embeddings=True, attention_dropout=0.0,
            )
        ),
        seed,
    ),
    # learned absolute positions, a fused qkv projection, tied embeddings
    "gpt2": lambda vocab, seed: _seeded(
        lambda: GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                eos_token_id=None,
            )
        ),
        seed,
    ),
}  # fmt: skip
"""Builders ``(vocab_size, seed) -> model`` of tiny random causal LMs of three families: three
ways a decoder turns positions and masks into attention."""


def make_tiny_family_model(
    family: str, vocab_size: int, *, seed: int = 0, attn_implementation: str | None = None
) -> PreTrainedModel:
    """A tiny random float32 causal LM of a :data:`TINY_FAMILIES` family, in eval mode.

    Args:
        family: a key of :data:`TINY_FAMILIES` (``llama``, ``qwen2``, ``gpt2``).
        vocab_size: number of token ids.
        seed: seed of the weight initialization (the global RNG is left untouched).
        attn_implementation: e.g. ``"eager"``; None keeps transformers' default (``sdpa``).
    """
    model = TINY_FAMILIES[family](vocab_size, seed)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
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


def greedy_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    stops: Sequence[str],
    max_new_tokens: int,
) -> str:
    """transformers' own greedy ``generate`` on ``prompt`` alone (lm-eval's harness at batch
    size 1), cut at the first end-of-sequence token and then at the earliest stop string: the
    text :func:`mrpo.evals.generate.generate_until` must give."""
    from mrpo.evals.generate import cut_at_stops, eos_token_ids

    ids = tokenizer.encode(prompt, add_special_tokens=False)
    out = model.generate(  # type: ignore[operator]
        torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0
    )
    new = out[0, len(ids) :].tolist()
    eos = set(eos_token_ids(model, tokenizer))
    end = next((i for i, t in enumerate(new) if t in eos), len(new))
    return cut_at_stops(str(tokenizer.decode(new[:end], skip_special_tokens=True)), stops)


class AllLogits(torch.nn.Module):
    """``model`` behind a forward without ``logits_to_keep`` (as older or custom models have),
    so that :func:`mrpo.logprobs.model_sequence_logprobs` computes logits at every position."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        use_cache: bool,
    ) -> object:
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
        )
