"""Tiny tokenizers, rendering with chat templates, tokenization spans and truncation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrpo.data.tokenize import encode_texts, render_pairs, tokenize_pairs, with_system_prompt
from mrpo.data.types import PreferenceExample
from mrpo.testing import tokenizers as tiny
from mrpo.testing.tokenizers import TOKENIZER_KINDS, make_tiny_tokenizer
from support.pairs import render_pair, tokenize_pair, truncate_pair

PROMPT = (
    {"role": "user", "content": "How do plants eat?"},
    {"role": "assistant", "content": "Sunlight."},
    {"role": "user", "content": "More detail, please’?"},
)
EXAMPLE = PreferenceExample(
    PROMPT, "They make sugar from light, water and air.", "No idea.", index=3
)
END_OF_TURN = {"chatml": "<|im_end|>\n", "zephyr": "</s>\n"}


# --- tiny tokenizers -----------------------------------------------------------------------


def test_tiny_tokenizers_differ_in_ids_and_templates():
    chatml, zephyr = make_tiny_tokenizer("chatml"), make_tiny_tokenizer("zephyr")
    assert (len(chatml), len(zephyr)) == (384, 320)
    text = "The capital of France is Paris."
    assert chatml.encode(text, add_special_tokens=False) != zephyr.encode(
        text, add_special_tokens=False
    )
    messages = [{"role": "user", "content": "Hi"}]
    assert (
        chatml.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        zephyr.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        == "<|user|>\nHi</s>\n<|assistant|>\n"
    )
    assert (chatml.eos_token, chatml.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert (zephyr.bos_token, zephyr.eos_token, zephyr.pad_token) == ("<s>", "</s>", "<pad>")
    # zephyr adds its bos only when asked for special tokens
    assert zephyr.encode("Hi")[0] == zephyr.bos_token_id
    assert zephyr.bos_token_id not in zephyr.encode("Hi", add_special_tokens=False)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_tiny_tokenizer_is_deterministic_and_round_trips(kind):
    text = "Any text, even ünïcödé and emoji 🙂, encodes."
    ids = make_tiny_tokenizer(kind).encode(text, add_special_tokens=False)
    tiny._trained_json.cache_clear()  # retrain: the same ids must come back
    again = make_tiny_tokenizer(kind)
    assert again.encode(text, add_special_tokens=False) == ids
    assert again.decode(ids) == text
    special = "<|im_start|>" if kind == "chatml" else "<|user|>"
    assert len(again.encode(special, add_special_tokens=False)) == 1


def test_tiny_tokenizer_returns_fresh_objects():
    a = make_tiny_tokenizer()
    a.padding_side = "left"
    a.pad_token = a.eos_token
    b = make_tiny_tokenizer()
    assert (b.padding_side, b.pad_token) == ("right", "<|endoftext|>")


def test_unknown_tiny_tokenizer_kind():
    with pytest.raises(ValueError, match="unknown tiny tokenizer kind 'llama'"):
        make_tiny_tokenizer("llama")


# --- rendering and spans -------------------------------------------------------------------


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_spans_decode_to_rendered_text(kind):
    tok = make_tiny_tokenizer(kind)
    pair = tokenize_pair(EXAMPLE, tok, max_length=1024)
    prompt_text = tok.apply_chat_template(list(PROMPT), add_generation_prompt=True, tokenize=False)
    assert tok.decode(pair.prompt_ids) == prompt_text
    assert tok.decode(pair.chosen_ids) == EXAMPLE.chosen + END_OF_TURN[kind]
    assert tok.decode(pair.rejected_ids) == EXAMPLE.rejected + END_OF_TURN[kind]
    full = tok.apply_chat_template(
        [*PROMPT, {"role": "assistant", "content": EXAMPLE.chosen}], tokenize=False
    )
    assert tok.decode(pair.prompt_ids + pair.chosen_ids) == full
    assert (pair.index, pair.truncated) == (3, False)
    assert tok.bos_token_id is None or tok.bos_token_id not in pair.prompt_ids


def test_policy_and_reference_tokenize_the_same_text_differently():
    a = tokenize_pair(EXAMPLE, make_tiny_tokenizer("chatml"), max_length=1024)
    b = tokenize_pair(EXAMPLE, make_tiny_tokenizer("zephyr"), max_length=1024)
    assert a.chosen_ids != b.chosen_ids and a.prompt_ids != b.prompt_ids


def test_system_prompt_inserted_or_replaced():
    assert with_system_prompt(PROMPT, None) == list(PROMPT)
    inserted = with_system_prompt(PROMPT, "Be terse.")
    assert inserted == [{"role": "system", "content": "Be terse."}, *PROMPT]
    replaced = with_system_prompt(inserted, "Be verbose.")
    assert replaced == [{"role": "system", "content": "Be verbose."}, *PROMPT]
    tok = make_tiny_tokenizer("chatml")
    rendered = render_pair(EXAMPLE, tok, system_prompt="Be terse.")
    assert rendered.prompt.startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n")
    assert rendered.chosen == EXAMPLE.chosen + "<|im_end|>\n"


def test_eos_appended_when_template_renders_nothing_after_response():
    plain = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tok = make_tiny_tokenizer("zephyr")
    rendered = render_pair(EXAMPLE, tok, chat_template=plain)
    assert rendered.prompt.endswith("user: More detail, please’?\nassistant: ")
    assert rendered.chosen == EXAMPLE.chosen + "\n</s>"
    pair = tokenize_pair(EXAMPLE, tok, max_length=1024, chat_template=plain)
    assert pair.chosen_ids[-1] == tok.eos_token_id


def test_template_whose_prompt_is_not_a_prefix_is_rejected():
    # renders a different header when a final assistant message is present
    odd = (
        "{% if messages[-1]['role'] == 'assistant' %}X{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(ValueError, match=r"does not render the prompt .* prefix .* character 0"):
        render_pair(EXAMPLE, make_tiny_tokenizer(), chat_template=odd)


def test_tokenizer_without_chat_template():
    tok = make_tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="has no chat template; pass chat_template="):
        tokenize_pair(EXAMPLE, tok, max_length=64)


# --- truncation ----------------------------------------------------------------------------


def ids(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def test_truncate_fits_unchanged():
    assert truncate_pair(ids(4), ids(6, 100), ids(3, 200), max_length=10) == (
        tuple(ids(4)),
        tuple(ids(6, 100)),
        tuple(ids(3, 200)),
        False,
        False,
    )


def test_truncate_prompt_end_to_max_prompt_length_then_responses():
    prompt, chosen, rejected, p_cut, r_cut = truncate_pair(
        ids(8), ids(9, 100), ids(2, 200), max_length=10, max_prompt_length=3
    )
    assert prompt == (5, 6, 7)  # the prompt keeps its end
    assert chosen == tuple(ids(7, 100))  # 10 - 3 tokens, the response keeps its start
    assert rejected == (200, 201)
    assert (p_cut, r_cut) == (True, True)


def test_truncate_prompt_as_needed_without_max_prompt_length():
    # P=8, L=4, max 10: cut the prompt only to 10 - 4 = 6 tokens; responses fit.
    assert truncate_pair(ids(8), ids(4, 100), ids(1, 200), max_length=10)[:2] == (
        (2, 3, 4, 5, 6, 7),
        tuple(ids(4, 100)),
    )
    # P=8, L=9: the prompt keeps max_length // 2 = 5 tokens, responses get the other 5.
    prompt, chosen, _, p_cut, r_cut = truncate_pair(ids(8), ids(9, 100), ids(1, 200), max_length=10)
    assert (prompt, chosen, p_cut, r_cut) == ((3, 4, 5, 6, 7), tuple(ids(5, 100)), True, True)
    # A short prompt is never cut: only the response.
    prompt, chosen, _, p_cut, r_cut = truncate_pair(
        ids(2), ids(20, 100), ids(1, 200), max_length=10
    )
    assert (prompt, chosen, p_cut, r_cut) == ((0, 1), tuple(ids(8, 100)), False, True)


@settings(max_examples=200, deadline=None)
@given(
    p=st.integers(1, 40),
    c=st.integers(1, 40),
    r=st.integers(1, 40),
    max_length=st.integers(2, 60),
    mpl=st.one_of(st.none(), st.integers(1, 59)),
)
def test_truncation_invariants(p, c, r, max_length, mpl):
    mpl = None if mpl is None or mpl >= max_length else mpl
    prompt, chosen, rejected, p_cut, r_cut = truncate_pair(
        ids(p), ids(c, 100), ids(r, 200), max_length=max_length, max_prompt_length=mpl
    )
    assert len(prompt) + max(len(chosen), len(rejected)) <= max_length or not (p_cut or r_cut)
    assert prompt == tuple(ids(p)[p - len(prompt) :]) and len(prompt) >= 1
    assert chosen == tuple(ids(c, 100)[: len(chosen)]) and rejected == tuple(
        ids(r, 200)[: len(rejected)]
    )
    fits = p + max(c, r) <= max_length
    assert (p_cut or r_cut) == (not fits)
    if not fits:
        assert len(prompt) + max(len(chosen), len(rejected)) <= max_length


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_length": 1}, "max_length must be at least 2"),
        (
            {"max_length": 8, "max_prompt_length": 8},
            r"max_prompt_length must be in \[1, max_length=8\)",
        ),
    ],
)
def test_truncation_options_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        truncate_pair(ids(3), ids(3), ids(3), **kwargs)


def test_tokenize_pairs_counts_truncation_and_keeps_ends():
    tok = make_tiny_tokenizer("chatml")
    long = PreferenceExample(PROMPT, "word " * 60, "short", index=9)
    result = tokenize_pairs([EXAMPLE, long, EXAMPLE], tok, max_length=100, max_prompt_length=40)
    assert [p.truncated for p in result.pairs] == [False, True, False]
    assert (result.num_truncated, result.num_prompt_truncated, result.num_response_truncated) == (
        1,
        1,
        1,
    )
    assert (
        result.summary() == "tokenized 3 pairs; truncated 1 (prompt cut in 1, responses cut in 1)"
    )
    cut = result.pairs[1]
    assert len(cut.prompt_ids) == 40 and len(cut.chosen_ids) == 60  # 54 + 124 tokens before
    full_prompt = tok.encode(render_pair(long, tok).prompt, add_special_tokens=False)
    assert list(cut.prompt_ids) == full_prompt[-40:]
    assert tok.decode(cut.chosen_ids).startswith("word word")
    assert tok.decode(cut.rejected_ids) == "short<|im_end|>\n"


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_encoding_through_the_backend_gives_the_tokenizers_ids(kind):
    tok = make_tiny_tokenizer(kind)
    texts = [render_pair(EXAMPLE, tok).prompt, "They make sugar ünïcödé 🙂<|im_end|>\n", ""]
    expected = tok(texts, add_special_tokens=False)["input_ids"]
    assert encode_texts(tok, texts) == expected
    # A backend with truncation configured is called through the tokenizer, which lifts it.
    tok.backend_tokenizer.enable_truncation(max_length=3)
    assert encode_texts(tok, texts) == expected


def test_batched_rendering_equals_one_by_one():
    tok = make_tiny_tokenizer("zephyr")
    other = PreferenceExample(PROMPT[:1], "Roots.", "Leaves, mostly.", index=4)
    one_by_one = [render_pair(ex, tok, system_prompt="Be terse.") for ex in (EXAMPLE, other)]
    assert render_pairs([EXAMPLE, other], tok, system_prompt="Be terse.") == one_by_one
