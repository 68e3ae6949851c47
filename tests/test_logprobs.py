"""Sequence log-probs: shifting, masking, reductions, chunking, gradients, padding sides."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mrpo.logprobs import (
    IGNORE_INDEX,
    model_sequence_logprobs,
    position_ids_from_mask,
    scored_window,
    sequence_logprobs,
)
from mrpo.testing.models import make_tiny_model
from support.models import AllLogits

VOCAB = 13


def naive_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per row, per scored position t: log_softmax(logits[t - 1])[labels[t]], in float64."""
    sums, counts = [], []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        total, count = 0.0, 0
        for t in range(1, row_labels.shape[0]):
            label = int(row_labels[t])
            if label == IGNORE_INDEX:
                continue
            total += float(torch.log_softmax(row_logits[t - 1].double(), dim=-1)[label])
            count += 1
        sums.append(total)
        counts.append(count)
    return sums, counts


def random_case(n: int = 4, t: int = 7, v: int = VOCAB, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=gen) * 3
    labels = torch.randint(0, v, (n, t), generator=gen)
    ignore = torch.rand(n, t, generator=gen) < 0.4
    labels[ignore] = IGNORE_INDEX
    labels[-1] = IGNORE_INDEX  # a row without scored tokens
    return logits, labels


def test_hand_worked_values():
    # Position 0 has uniform logits over 2 tokens (p = 1/2 for token 0); position 1 has logits
    # [log 3, 0] (p = 1/4 for token 1). Labels score token 0 at t=1 and token 1 at t=2.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    summed = sequence_logprobs(logits, labels)
    mean = sequence_logprobs(logits, labels, average=True)
    assert summed.logps.item() == pytest.approx(-math.log(8.0), abs=1e-6)
    assert mean.logps.item() == pytest.approx(-math.log(8.0) / 2, abs=1e-6)
    assert summed.num_tokens.tolist() == [2]
    assert summed.logps.dtype == torch.float32
    assert summed.num_tokens.dtype == torch.int64


@pytest.mark.parametrize("average", [False, True])
def test_matches_naive_loop_on_random_logits(average):
    logits, labels = random_case()
    result = sequence_logprobs(logits, labels, average=average)
    sums, counts = naive_logprobs(logits, labels)
    expected = [s / c if average and c else s for s, c in zip(sums, counts, strict=True)]
    assert result.num_tokens.tolist() == counts
    torch.testing.assert_close(result.logps, torch.tensor(expected), atol=1e-5, rtol=0)


def test_zero_token_rows_are_zero_and_finite():
    logits, labels = random_case()
    labels[1] = IGNORE_INDEX
    labels[2, 1:] = IGNORE_INDEX
    labels[2, 0] = 3  # position 0 is never scored: nothing predicts it
    logits.requires_grad_(True)
    for average in (False, True):
        result = sequence_logprobs(logits, labels, average=average)
        assert result.logps[1:].tolist() == [0.0, 0.0, 0.0]
        assert result.num_tokens[1:].tolist() == [0, 0, 0]
    result.logps.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[1:] == 0).all()


def test_gradient_is_onehot_minus_softmax_on_scored_positions():
    logits, labels = random_case(n=3, t=5)
    logits.requires_grad_(True)
    sequence_logprobs(logits, labels).logps.sum().backward()
    expected = torch.zeros_like(logits)
    for n in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[n, t] != IGNORE_INDEX:
                onehot = torch.nn.functional.one_hot(labels[n, t], VOCAB).float()
                expected[n, t - 1] = onehot - torch.softmax(logits[n, t - 1].detach(), dim=-1)
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_unchunked_values_and_gradients(chunk_size, dtype):
    base, labels = random_case(n=5)
    grads = []
    results = []
    for chunk in (None, chunk_size):
        logits = base.to(dtype).requires_grad_(True)
        result = sequence_logprobs(logits, labels, average=True, chunk_size=chunk)
        (result.logps * torch.arange(1.0, 6.0)).sum().backward()
        results.append(result)
        grads.append(logits.grad)
    assert results[0].logps.dtype == torch.float32
    torch.testing.assert_close(results[0].logps, results[1].logps, atol=0, rtol=0)
    torch.testing.assert_close(results[0].num_tokens, results[1].num_tokens)
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)


def test_non_finite_logits_at_ignored_positions_do_not_leak():
    logits, labels = random_case(n=2, t=4)
    labels[0] = torch.tensor([IGNORE_INDEX, 1, 2, IGNORE_INDEX])
    logits[0, 2:] = float("nan")  # position 3 is ignored, so logits[0, 2] predicts nothing
    result = sequence_logprobs(logits, labels)
    assert torch.isfinite(result.logps).all()


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape", "chunk_size", "message"),
    [
        ((2, 5), (2, 5), None, "logits must have shape"),
        ((2, 5, VOCAB), (2, 4), None, "labels must have shape"),
        ((2, 5, VOCAB), (2, 5), 0, "chunk_size"),
    ],
)
def test_bad_shapes_and_options_raise(logits_shape, labels_shape, chunk_size, message):
    with pytest.raises(ValueError, match=message):
        sequence_logprobs(
            torch.zeros(logits_shape),
            torch.zeros(labels_shape, dtype=torch.long),
            chunk_size=chunk_size,
        )


@pytest.mark.parametrize("bad_label", [VOCAB, -1])
def test_out_of_vocabulary_labels_raise(bad_label):
    logits, labels = random_case()
    labels[0, 2] = bad_label
    with pytest.raises(ValueError, match=rf"token ids in \[0, {VOCAB}\)"):
        sequence_logprobs(logits, labels)


def test_position_ids_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


SEQUENCES = [  # (token ids, number of prompt tokens)
    ([1, 5, 7, 2, 9, 4, 3], 3),
    ([6, 2, 8, 1], 2),
    ([4, 4, 11, 12, 10], 1),
    ([3, 9], 2),  # prompt only: no scored token
]


def padded_batch(left: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of SEQUENCES, padded with id 0 on one side."""
    width = max(len(ids) for ids, _ in SEQUENCES)
    input_ids = torch.zeros(len(SEQUENCES), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, (ids, prompt_len) in enumerate(SEQUENCES):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        row_labels = torch.tensor(ids)
        row_labels[:prompt_len] = IGNORE_INDEX
        input_ids[row, span] = torch.tensor(ids)
        attention_mask[row, span] = 1
        labels[row, span] = row_labels
    return input_ids, attention_mask, labels


def tiny_gpt2() -> GPT2LMHeadModel:
    """A model with absolute position embeddings: left padding changes its output unless the
    position ids count real tokens only (rotary Llama positions are shift-invariant)."""
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_model(request):
    if request.param == "gpt2":
        return tiny_gpt2()
    return make_tiny_model(VOCAB, seed=3, hidden_size=32, num_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def unpadded_reference(tiny_model):
    """Naive per-token sums and counts, each sequence run alone without padding."""
    sums, counts = [], []
    with torch.no_grad():
        for ids, prompt_len in SEQUENCES:
            logits = tiny_model(torch.tensor([ids])).logits
            labels = torch.tensor([ids])
            labels[0, :prompt_len] = IGNORE_INDEX
            row_sums, row_counts = naive_logprobs(logits, labels)
            sums += row_sums
            counts += row_counts
    return sums, counts


@pytest.mark.parametrize("fused", [True, False], ids=["fused_head", "logits"])
@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("average", [False, True], ids=["sum", "mean"])
def test_model_logprobs_match_naive_loop(tiny_model, unpadded_reference, left, average, fused):
    sums, counts = unpadded_reference
    expected = [s / c if average and c else s for s, c in zip(sums, counts, strict=True)]
    with torch.no_grad():
        result = model_sequence_logprobs(
            tiny_model, *padded_batch(left), average=average, fused_head=fused
        )
    assert result.num_tokens.tolist() == counts
    torch.testing.assert_close(result.logps, torch.tensor(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused_head", "logits"])
def test_model_logprobs_gradient_reaches_parameters(tiny_model, fused):
    tiny_model.zero_grad()
    result = model_sequence_logprobs(
        tiny_model, *padded_batch(left=True), chunk_size=2, fused_head=fused, head_chunk_tokens=2
    )
    result.logps.sum().backward()
    grads = [p.grad for p in tiny_model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert tiny_model.get_input_embeddings().weight.grad.abs().sum() > 0
    tiny_model.zero_grad()


def test_model_logprobs_rejects_mismatched_shapes(tiny_model):
    input_ids, attention_mask, labels = padded_batch(left=False)
    with pytest.raises(ValueError, match="same"):
        model_sequence_logprobs(tiny_model, input_ids, attention_mask[:, :-1], labels)


def test_scored_window_spans_from_before_the_first_scored_label():
    ignore = IGNORE_INDEX
    labels = torch.tensor(
        [[ignore, ignore, ignore, 5, 6, ignore], [ignore, ignore, ignore, ignore, 7, 8]]
    )
    assert scored_window(labels) == 4  # logits at positions 2..5: position 2 predicts label 3
    assert scored_window(torch.full((2, 5), ignore)) == 1  # nothing scored
    assert scored_window(torch.tensor([[3, 4, 5]])) == 3  # column 0 is never predicted: all


def test_only_the_scored_window_gets_logits(tiny_model, monkeypatch):
    input_ids, attention_mask, labels = padded_batch(left=True)
    with torch.no_grad():
        full = sequence_logprobs(
            tiny_model(
                input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
            ).logits,
            labels,
        )
        seen = []
        hook = tiny_model.register_forward_hook(lambda m, a, out: seen.append(out.logits.shape[1]))
        try:
            windowed = model_sequence_logprobs(
                tiny_model, input_ids, attention_mask, labels, fused_head=False
            )
        finally:
            hook.remove()
        plain = model_sequence_logprobs(AllLogits(tiny_model), input_ids, attention_mask, labels)
    assert seen == [scored_window(labels)] and seen[0] < input_ids.shape[1]
    torch.testing.assert_close(windowed.logps, full.logps, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain.logps, full.logps, atol=1e-6, rtol=0)
    assert windowed.num_tokens.tolist() == full.num_tokens.tolist()
