"""Tiny random causal language models of three families, transformers' greedy generation as
the reference of mrpo's, and a model without ``logits_to_keep``, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from mrpo.evals.generate import cut_at_stops, eos_token_ids
from mrpo.testing.models import make_tiny_model


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
