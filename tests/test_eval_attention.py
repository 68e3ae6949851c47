"""Evaluation decoding with every attention implementation the config accepts.

A policy trains with its configured attention (``model.attn_implementation``); the slot
decoder of the in-training GSM8K evaluation always runs its own SDPA attention, so that each
implementation decodes transformers' greedy text. Tiny float32 models of three families
(Llama: rotary; Qwen2: rotary, grouped key-value heads; GPT-2: learned absolute positions).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from mrpo.evals.generate import generate_until
from mrpo.evals.slots import SlotCache, cached_keys_values, slot_attention
from mrpo.logprobs import cache_argument
from mrpo.testing.tokenizers import make_tiny_tokenizer
from support.models import greedy_text, make_tiny_family_model

PROMPTS = [  # of unequal lengths
    "Question: How many clips did she sell?\nAnswer:",
    "Q: What is the capital of France?\nA:",
    "The quick brown fox ",
    "Hi",
    "Plants use sunlight, water and",
]
# The families that implement each (GPT-2 has no FlexAttention).
IMPLEMENTATIONS = {
    "llama": ("eager", "sdpa", "flex_attention", "flash_attention_2"),
    "qwen2": ("eager", "sdpa", "flex_attention", "flash_attention_2"),
    "gpt2": ("eager", "sdpa", "flash_attention_2"),
}
CASES = [(f, a) for f, names in IMPLEMENTATIONS.items() for a in names]
RUN_ON_CPU = ("eager", "sdpa")
"""Implementations whose own ``generate`` is the reference here; FlexAttention compiles for
about 40 s per shape on the CPU and flash-attention runs on CUDA only, so their reference is
sdpa's text of the same weights."""


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer("chatml")


def configured(family: str, attention: str, vocab_size: int) -> torch.nn.Module:
    """A tiny model (seed 3) configured with ``attention`` as loading would leave it."""
    if attention == "flash_attention_2":  # set_attn_implementation needs flash-attn installed
        model = make_tiny_family_model(family, vocab_size, seed=3)
        model.config._attn_implementation = attention  # as from_pretrained on a GPU sets it
        return model
    return make_tiny_family_model(family, vocab_size, seed=3, attn_implementation=attention)


_greedy: dict[tuple[str, str], list[str]] = {}


def greedy_texts(family: str, attention: str, tokenizer) -> list[str]:
    """transformers' greedy text of each prompt alone, once per family and implementation."""
    if (family, attention) not in _greedy:
        model = configured(family, attention, len(tokenizer))
        _greedy[family, attention] = [greedy_text(model, tokenizer, p, [], 12) for p in PROMPTS]
    return _greedy[family, attention]


@pytest.mark.parametrize("draft_tokens", [0, 8], ids=["one_token", "drafts"])
@pytest.mark.parametrize(("family", "attention"), CASES)
def test_every_attention_implementation_decodes_greedy_text(
    tokenizer, family, attention, draft_tokens
) -> None:
    """Prompts of unequal lengths in 3 slots refilled as rows finish, with and without guessed
    tokens; the longest prompt (25 tokens) and its 12 new ones end one position before the
    context's end (38 positions), so the positions of its later guesses are clamped. A
    flash-attention model cannot run its configured attention on this machine at all: its
    decoding shows that no call of the decoder reaches the configured kernel."""
    model = configured(family, attention, len(tokenizer))
    out = generate_until(
        model, tokenizer, PROMPTS, stop=[], max_new_tokens=12, batch_size=3, max_length=38,
        draft_tokens=draft_tokens,
    )  # fmt: skip
    reference = attention if attention in RUN_ON_CPU else "sdpa"
    assert [g.text for g in out] == greedy_texts(family, reference, tokenizer)
    assert model.config._attn_implementation == attention  # restored after generation


@pytest.mark.parametrize(("family", "attention"), CASES)
def test_a_decoding_step_gives_the_logits_of_a_plain_forward(family, attention) -> None:
    """Three rows of unequal lengths (the shorter ones have unwritten columns in the step's
    width) each run three tokens (their last one and two guesses): every logit is the plain
    forward's of the row's whole sequence. The texts above can agree by chance where a
    wrong mask moves the logits without flipping an argmax; the logits cannot."""
    vocab = 41
    model = configured(family, attention, vocab)
    plain = make_tiny_family_model(family, vocab, seed=3)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    steps = [[20, 21, 22], [23, 24, 25], [26, 27, 28]]
    cache_arg = cache_argument(model)
    with torch.no_grad(), slot_attention(model):
        cache = None
        for ids in prompts:
            prompt_cache = DynamicCache()
            model(input_ids=torch.tensor([ids]), use_cache=True, **{cache_arg: prompt_cache})
            keys_values = cached_keys_values(prompt_cache)
            if cache is None:
                keys = keys_values[0][0]
                cache = SlotCache(
                    num_layers=len(keys_values), kv_heads=keys.shape[1], head_dim=keys.shape[-1],
                    slots=3, capacity=16, dtype=keys.dtype, device=keys.device,
                )  # fmt: skip
            cache.insert(keys_values)
        assert cache is not None
        positions, mask = cache.begin_step(3)
        logits = model(
            input_ids=torch.tensor(steps), attention_mask=mask, position_ids=positions,
            use_cache=True, **{cache_arg: cache},
        ).logits  # fmt: skip
        for row, (ids, step) in enumerate(zip(prompts, steps, strict=True)):
            want = plain(input_ids=torch.tensor([ids + step])).logits[0, -3:]
            torch.testing.assert_close(logits[row], want, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == attention
