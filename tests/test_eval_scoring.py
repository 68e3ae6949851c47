"""Batched log-likelihood and generation: harness tokenization, stops, batch independence."""

from __future__ import annotations

import pytest
import torch

from mrpo.evals.generate import StopOnStrings, cut_at_stops, eos_token_ids, generate_until
from mrpo.evals.loglik import encode_pair, loglikelihood, score_token_pairs
from mrpo.testing.models import make_tiny_model
from mrpo.testing.tokenizers import make_tiny_tokenizer
from support.models import greedy_text

CONTEXTS = [
    "Question: How many clips did she sell?\nAnswer:",
    "Q: What is the capital of France?\nA:",
    "The quick brown fox ",  # trailing space moves to the continuation
    "Hi",
]
CONTINUATIONS = [
    " 72 clips",
    " Paris.",
    "jumps over the lazy dog.",
    " there, how are you doing today?",
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer("chatml")


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model(len(tokenizer), seed=1, max_position_embeddings=512)


def test_encode_pair_splits_like_the_harness(tokenizer) -> None:
    ctx, cont = encode_pair(tokenizer, "The quick brown fox ", "jumps")
    whole = tokenizer.encode("The quick brown fox jumps", add_special_tokens=False)
    context = tokenizer.encode("The quick brown fox", add_special_tokens=False)
    assert ctx == context
    assert cont == whole[len(context) :]
    assert tokenizer.decode(cont).startswith(" jumps")
    # Empty context: the end-of-text token stands in for it.
    ctx, cont = encode_pair(tokenizer, "", " hello")
    assert ctx == [tokenizer.eos_token_id]
    assert cont == tokenizer.encode(" hello", add_special_tokens=False)
    with pytest.raises(ValueError, match="no tokens"):
        encode_pair(tokenizer, "abc", "")


def naive(model, ctx: list[int], cont: list[int]) -> float:
    """Unpadded single-sequence reference in float64."""
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return sum(float(logprobs[len(ctx) - 1 + t, tok]) for t, tok in enumerate(cont))


def test_loglik_batched_equals_one_by_one_and_naive(model, tokenizer) -> None:
    requests = [(c, k) for c in CONTEXTS for k in CONTINUATIONS[:2]] + [
        (c, k) for c, k in zip(CONTEXTS, CONTINUATIONS, strict=True)
    ]
    batched = loglikelihood(model, tokenizer, requests, batch_size=5)
    single = [loglikelihood(model, tokenizer, [r], batch_size=1)[0] for r in requests]
    for (context, continuation), b, s in zip(requests, batched, single, strict=True):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        assert b.logprob == pytest.approx(s.logprob, abs=1e-4)
        assert b.logprob == pytest.approx(naive(model, ctx, cont), abs=1e-4)
        assert b.num_tokens == len(cont) and b.is_greedy == s.is_greedy


def test_loglik_is_greedy_and_duplicates_scored_once(model) -> None:
    ctx = [5, 6, 7]
    with torch.no_grad():
        greedy_next = int(model(torch.tensor([ctx])).logits[0, -1].argmax())
    rows_seen: list[int] = []
    hook = model.register_forward_hook(
        lambda m, args, kw, out: rows_seen.append(len(kw["input_ids"])), with_kwargs=True
    )
    try:
        results = score_token_pairs(
            model,
            [(ctx, [greedy_next]), (ctx, [greedy_next]), (ctx, [(greedy_next + 1) % 384])],
            batch_size=8,
        )
    finally:
        hook.remove()
    assert rows_seen == [2]  # three requests, two distinct
    assert [r.is_greedy for r in results] == [True, True, False]
    assert results[0] == results[1]


def test_loglik_shared_prefix_runs_once(model, tokenizer) -> None:
    context = "Q: What is the capital of France?\nA: The capital of France is Paris.\n\nQ: Who?\nA:"
    requests = [(context, " Me."), (context, " You, and them."), (context + " Hmm", " ok")]
    shapes: list[tuple[int, int]] = []
    hook = model.register_forward_hook(
        lambda m, args, kw, out: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        shared = loglikelihood(model, tokenizer, requests, batch_size=3)
    finally:
        hook.remove()
    plain = loglikelihood(model, tokenizer, requests, batch_size=3, share_prefix=False)
    prefix = len(tokenizer.encode(context, add_special_tokens=False))
    # The common context runs once, but for its last token: that one predicts a scored token.
    assert shapes[0] == (1, prefix - 1)
    # Then each row runs only its own tokens: its input (context + continuation, less the last
    # token) after the shared prefix.
    pairs = [encode_pair(tokenizer, ctx, cont) for ctx, cont in requests]
    width = max(len(c) + len(k) - 1 for c, k in pairs) - (prefix - 1)
    assert shapes[1:] == [(3, width)]
    for a, b, (ctx, cont) in zip(shared, plain, requests, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.logprob == pytest.approx(
            naive(model, *encode_pair(tokenizer, ctx, cont)), abs=1e-4
        )


def test_loglik_left_truncates_to_max_length(model) -> None:
    ctx, cont = list(range(10, 40)), [41, 42]
    result = score_token_pairs(model, [(ctx, cont)], max_length=8)[0]
    # The harness feeds (ctx + cont)[-(max_length + 1):][:-1]: the last 7 context tokens.
    assert result.logprob == pytest.approx(naive(model, ctx[-7:], cont), abs=1e-4)
    with pytest.raises(ValueError, match="exceeds max_length"):
        score_token_pairs(model, [(ctx, list(range(9)))], max_length=8)


def test_cut_at_stops() -> None:
    text = "12 apples.\n\nQuestion: next one</s>"
    assert cut_at_stops(text, ["Question:", "</s>"]) == "12 apples.\n\n"
    assert cut_at_stops(text, ["</s>", "Question:"]) == "12 apples.\n\n"  # earliest, any order
    assert cut_at_stops("no stop here", ["Question:", ""]) == "no stop here"


def test_stop_criterion_marks_rows_with_a_stop(tokenizer) -> None:
    criterion = StopOnStrings(tokenizer, ["Question:"])
    rows = [" 12 apples.\nQuestion: and", " 12 apples and more", "Quest"]
    hits = [criterion(tokenizer.encode(r, add_special_tokens=False)) for r in rows]
    assert hits == [True, False, False]
    assert not StopOnStrings(tokenizer, [])(tokenizer.encode("Question:"))


def test_generation_batched_equals_one_by_one(model, tokenizer) -> None:
    prompts = [*CONTEXTS, "Plants use sunlight, water and"]
    kwargs = {"stop": ["Question:"], "max_new_tokens": 12}
    batched = generate_until(model, tokenizer, prompts, batch_size=3, **kwargs)
    single = [generate_until(model, tokenizer, [p], batch_size=1, **kwargs)[0] for p in prompts]
    assert batched == single
    assert all(
        g.prompt_tokens == len(tokenizer.encode(p)) for g, p in zip(batched, prompts, strict=True)
    )


def test_generation_stops_at_stop_strings_and_eos(model, tokenizer) -> None:
    prompt = CONTEXTS[1]
    free = generate_until(model, tokenizer, [prompt], stop=[], max_new_tokens=16)[0]
    assert free.num_tokens == 16
    # Without stops, the text is transformers' own greedy decoding (the harness's generate).
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    out = model.generate(
        torch.tensor([prompt_ids]), max_new_tokens=16, do_sample=False, pad_token_id=0
    )
    new_ids = out[0, len(prompt_ids) :].tolist()
    assert free.text == tokenizer.decode(new_ids, skip_special_tokens=True)
    # A stop string taken from the free run (printable ASCII, so every decode shows it alike).
    start = next(i for i in range(2, len(free.text)) if free.text[i : i + 2].isalnum())
    stop = free.text[start : start + 2]
    stopped = generate_until(
        model, tokenizer, [prompt, CONTEXTS[0]], stop=[stop], max_new_tokens=16
    )
    assert stopped[0].text == free.text[: free.text.find(stop)]
    assert stopped[0].num_tokens < 16  # the criterion ended this row early
    # The other row went on without it (its cache rows dropped) and is unchanged by that.
    alone = generate_until(model, tokenizer, [CONTEXTS[0]], stop=[stop], max_new_tokens=16)
    assert stopped[1] == alone[0] and stopped[1].num_tokens > stopped[0].num_tokens

    # A token of the free run declared end-of-sequence: generation ends there, text excluded.
    eos = new_ids[4]
    model.generation_config.eos_token_id = eos
    try:
        assert eos in eos_token_ids(model, tokenizer)
        ended = generate_until(model, tokenizer, [prompt], stop=[], max_new_tokens=16)[0]
    finally:
        model.generation_config.eos_token_id = None
    first = new_ids.index(eos)
    assert ended.text == tokenizer.decode(new_ids[:first], skip_special_tokens=True)
    assert ended.num_tokens == first + 1


def test_generation_refuses_sliding_window_models() -> None:
    from transformers import MistralConfig, Qwen2Config

    from mrpo.evals.slots import check_full_attention

    check_full_attention(Qwen2Config(use_sliding_window=False))  # full attention everywhere
    with pytest.raises(ValueError, match="mistral has sliding-window"):
        check_full_attention(MistralConfig(sliding_window=64))


def test_generation_rejects_bad_arguments(model, tokenizer) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        generate_until(model, tokenizer, ["a"], stop=[], batch_size=0)
    with pytest.raises(ValueError, match="leaves no room"):
        generate_until(model, tokenizer, ["a"], stop=[], max_new_tokens=600)


@pytest.mark.parametrize("draft_tokens", [0, 8])
def test_continuous_batching_equals_transformers_greedy(model, tokenizer, draft_tokens) -> None:
    """More prompts than slots (finished rows are refilled), rows that end at different steps
    (an eos token that the free runs emit at different places), with and without guessed
    tokens: every text is still transformers' greedy text of the prompt alone."""
    prompts = [*CONTEXTS, *CONTINUATIONS, "Plants use sunlight, water and", "Thank you"]
    free = generate_until(model, tokenizer, prompts, stop=[], max_new_tokens=14, batch_size=4)
    counts: dict[int, int] = {}
    for text in (g.text for g in free):
        for token in set(tokenizer.encode(text, add_special_tokens=False)):
            counts[token] = counts.get(token, 0) + 1
    eos = next(t for t, c in sorted(counts.items()) if 2 <= c <= len(prompts) - 2)
    model.generation_config.eos_token_id = eos
    try:
        stops = ["Question:"]
        out = generate_until(
            model, tokenizer, prompts, stop=stops, max_new_tokens=14, batch_size=3,
            draft_tokens=draft_tokens,
        )  # fmt: skip
        expected = [greedy_text(model, tokenizer, p, [*stops, "<|im_end|>"], 14) for p in prompts]
    finally:
        model.generation_config.eos_token_id = None
    assert [g.text for g in out] == expected
    lengths = {g.num_tokens for g in out}
    assert len(lengths) > 2 and max(lengths) == 14  # rows did end at different steps


def test_guessed_tokens_cut_decoding_steps_not_the_text(model, tokenizer) -> None:
    """The tiny model repeats phrases of its own text: guesses looked up there hold, so steps
    keep several tokens; texts and token counts equal one token per step (and transformers')."""
    prompts = [*CONTEXTS, "Plants use sunlight, water and"]
    calls: list[int] = []
    hook = model.base_model.register_forward_hook(lambda *_: calls.append(1))

    def steps(prompt: str, draft_tokens: int):
        calls.clear()
        out = generate_until(
            model, tokenizer, [prompt], stop=[], max_new_tokens=40, draft_tokens=draft_tokens
        )[0]
        return out, len(calls) - 1  # the prompt's read is one call

    try:
        one = [steps(p, 0) for p in prompts]
        guessed = [steps(p, 8) for p in prompts]
    finally:
        hook.remove()
    assert [g for g, _ in guessed] == [g for g, _ in one]
    assert [g.text for g, _ in one] == [greedy_text(model, tokenizer, p, [], 40) for p in prompts]
    assert {n for _, n in one} == {39}  # one token per step: the first came with the prompt
    assert all(n <= 39 for _, n in guessed) and sum(n for _, n in guessed) < 39 * len(prompts)


def test_grouped_query_attention_equals_sdpa_with_repeated_heads() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from mrpo.evals.slots import grouped_query_attention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups = 3
    query, key, value = torch.randn(2, 6, 4, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    mask = torch.rand(2, 1, 4, 10) > 0.3
    mask[..., 0] = True  # every query sees a column
    got, _ = grouped_query_attention(module, query, key, value, mask, scaling=0.3)
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert got.shape == want.shape == (2, 4, 6, 8)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_ngram_drafter_guesses_what_followed_the_latest_occurrence() -> None:
    from mrpo.evals.drafts import NgramDrafter

    drafter = NgramDrafter([1, 2, 3, 9, 1, 2, 3, 7, 5, 2, 3])
    assert drafter.draft(2) == [7, 5]  # "2 3" last occurred before 7 5 (not before 9)
    drafter.append(4)
    assert drafter.draft(3) == []  # 4 never occurred before
    assert NgramDrafter([5, 6, 5, 6, 5]).draft(5) == [6, 5, 6, 5, 6]  # a loop goes on
    longest = NgramDrafter([8, 1, 2, 0, 2, 5, 1, 2])
    assert longest.draft(1) == [0]  # "1 2" (before 0) wins over the later "2" (before 5)
    assert NgramDrafter([3, 3], max_ngram=2).draft(0) == []
    with pytest.raises(ValueError, match="min_ngram"):
        NgramDrafter([], max_ngram=1, min_ngram=2)


def test_slot_cache_layout() -> None:
    from mrpo.evals.slots import SlotCache

    cache = SlotCache(
        num_layers=1, kv_heads=1, head_dim=2, slots=3, capacity=4, dtype=torch.float32,
        device=torch.device("cpu"),
    )  # fmt: skip

    def prompt(n: int, value: float):
        kv = torch.full((1, 1, n, 2), value)
        return [(kv, kv.clone())]

    assert cache.insert(prompt(3, 1.0)) == 0
    assert cache.insert(prompt(5, 2.0)) == 1  # longer than the buffers: they grow
    assert cache.ends == [3, 5] and cache.capacity >= 5
    keys = cache.layers[0].keys
    assert keys[0, 0, :3, 0].tolist() == [1.0] * 3 and keys[1, 0, :5, 0].tolist() == [2.0] * 5
    positions, mask = cache.begin_step(2)  # two tokens per row: 7 columns read
    assert positions.tolist() == [[3, 4], [5, 6]]
    assert mask.shape == (2, 1, 2, 7)
    assert mask[0, 0].tolist() == [[True] * 4 + [False] * 3, [True] * 5 + [False] * 2]
    assert mask[1, 0].tolist() == [[True] * 6 + [False], [True] * 7]
    new = torch.tensor([[9.0, 8.0], [7.0, 6.0]]).reshape(2, 1, 2, 1).expand(2, 1, 2, 2)
    k, v = cache.layers[0].update(new, torch.zeros(2, 1, 2, 2))
    assert k.shape == v.shape == (2, 1, 7, 2)
    assert k[0, 0, :, 0].tolist()[:5] == [1.0, 1.0, 1.0, 9.0, 8.0]
    assert k[1, 0, 5:, 0].tolist() == [7.0, 6.0]
    cache.advance([1, 2])  # row 0 keeps one of its two tokens (8.0 will be overwritten)
    assert cache.ends == [4, 7]
    cache.remove(0)  # the last row takes row 0's place
    assert cache.ends == [7]
    assert cache.layers[0].keys[0, 0, :7, 0].tolist() == [2.0] * 5 + [7.0, 6.0]
    with pytest.raises(ValueError, match="2 counts for 1 active rows"):
        cache.advance([1, 1])


def test_generation_through_the_logits_when_the_head_cannot_be_split(
    model, tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mrpo.evals.generate as generate

    monkeypatch.setattr(generate, "split_lm_head", lambda _: None)
    prompts = [*CONTEXTS, "Plants use sunlight, water and"]
    out = generate_until(model, tokenizer, prompts, stop=[], max_new_tokens=20, batch_size=2)
    assert [g.text for g in out] == [greedy_text(model, tokenizer, p, [], 20) for p in prompts]
