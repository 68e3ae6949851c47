"""The fused LM head: log-probs from hidden states in tiles, equal to the logits path."""

from __future__ import annotations

import functools

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel

import mrpo.logprobs.fused_head
from mrpo.logprobs import (
    IGNORE_INDEX,
    hidden_sequence_logprobs,
    model_sequence_logprobs,
    sequence_logprobs,
)
from mrpo.logprobs.fused_head import head_logprobs, split_lm_head
from mrpo.testing.models import make_tiny_model
from support.models import AllLogits

VOCAB = 37


def plain_head_logprobs(hidden, weight, bias, targets):
    """The reference: the whole (M, V) logits, log_softmax in float32, gather."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def head_case(rows: int = 11, width: int = 8, vocab: int = VOCAB, seed: int = 0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=gen)
    weight = torch.randn(vocab, width, generator=gen)
    b = torch.randn(vocab, generator=gen) if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    upstream = torch.randn(rows, generator=gen)  # a non-uniform incoming gradient
    return hidden, weight, b, targets, upstream


def grads_of(fn, hidden, weight, bias, targets, upstream):
    leaves = [t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias)]
    out = fn(*leaves, targets)
    (out * upstream).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def fused_and_plain(case, chunk_tokens):
    """(values, [grad hidden, grad weight, grad bias]) of the fused head and of whole logits."""
    fused = grads_of(functools.partial(head_logprobs, chunk_tokens=chunk_tokens), *case)
    return fused, grads_of(plain_head_logprobs, *case)


@pytest.mark.parametrize("chunk_tokens", [1, 4, 11, 64])
def test_values_and_gradients_equal_the_whole_logits(chunk_tokens):
    case = head_case()
    hidden, weight, bias, targets, _ = case
    (fused_out, fused_grads), (plain_out, plain_grads) = fused_and_plain(case, chunk_tokens)
    torch.testing.assert_close(fused_out, plain_out, atol=1e-5, rtol=0)
    for fused, plain in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    # Against float64: log p of each row's target.
    exact = torch.log_softmax(hidden.double() @ weight.double().T + bias.double(), dim=-1)
    expected = exact.gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(fused_out.double(), expected, atol=1e-5, rtol=0)


def test_frozen_head_gets_no_gradient_and_hidden_still_does():
    hidden, weight, _, targets, upstream = head_case(bias=False)
    hidden = hidden.requires_grad_(True)
    out = head_logprobs(hidden, weight, None, targets, chunk_tokens=3)
    (out * upstream).sum().backward()
    reference = hidden.detach().clone().requires_grad_(True)
    (plain_head_logprobs(reference, weight, None, targets) * upstream).sum().backward()
    assert weight.grad is None
    torch.testing.assert_close(hidden.grad, reference.grad, atol=1e-5, rtol=1e-5)


def test_bf16_tiles_match_the_bf16_logits_path():
    hidden, weight, bias, targets, upstream = head_case(rows=9, width=16)
    case = (hidden.bfloat16(), weight.bfloat16(), bias.bfloat16(), targets, upstream)
    (fused_out, fused_grads), (plain_out, plain_grads) = fused_and_plain(case, chunk_tokens=4)
    assert fused_out.dtype == torch.float32
    # Same bf16 logits, same float32 reduction: the values agree to float32 rounding.
    torch.testing.assert_close(fused_out, plain_out, atol=1e-5, rtol=0)
    for fused, plain in zip(fused_grads, plain_grads, strict=True):
        assert fused.dtype == torch.bfloat16
        # The fused path accumulates in float32; the plain one rounds to bf16 first.
        torch.testing.assert_close(fused.float(), plain.float(), atol=0.05, rtol=0.02)


def test_no_rows_gives_an_empty_result_that_backpropagates():
    _, weight, bias, _, _ = head_case()
    hidden = torch.zeros(0, 8, requires_grad=True)
    out = head_logprobs(hidden, weight, bias, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    out.sum().backward()
    assert hidden.grad.shape == (0, 8)


@pytest.mark.parametrize(
    ("hidden_shape", "targets_shape", "chunk", "message"),
    [
        ((4, 7), (4,), 2, "hidden must be"),
        ((4, 8), (3,), 2, "targets must be"),
        ((4, 8), (4,), 0, "chunk_tokens"),
    ],
)
def test_bad_shapes_raise(hidden_shape, targets_shape, chunk, message):
    _, weight, bias, _, _ = head_case()
    with pytest.raises(ValueError, match=message):
        head_logprobs(
            torch.zeros(hidden_shape),
            weight,
            bias,
            torch.zeros(targets_shape, dtype=torch.long),
            chunk_tokens=chunk,
        )


@pytest.mark.parametrize("average", [False, True], ids=["sum", "mean"])
def test_sequence_logprobs_from_hidden_states_equal_those_of_the_logits(average):
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 6, 8, generator=gen)
    weight, bias = torch.randn(VOCAB, 8, generator=gen), torch.randn(VOCAB, generator=gen)
    labels = torch.randint(0, VOCAB, (3, 6), generator=gen)
    labels[0, :2] = labels[1, :4] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX  # nothing scored: 0, not NaN
    fused = hidden_sequence_logprobs(hidden, weight, bias, labels, average=average, chunk_tokens=2)
    plain = sequence_logprobs(
        torch.nn.functional.linear(hidden, weight, bias), labels, average=average
    )
    torch.testing.assert_close(fused.logps, plain.logps, atol=1e-5, rtol=0)
    assert fused.num_tokens.tolist() == plain.num_tokens.tolist() == [4, 2, 0]
    assert fused.logps[2] == 0
    with pytest.raises(ValueError, match=r"hidden must be \(N, T, H\)"):
        hidden_sequence_logprobs(hidden[0], weight, bias, labels)
    with pytest.raises(ValueError, match="labels"):
        hidden_sequence_logprobs(hidden, weight, bias, labels[:, :-1])


def tiny_gpt2(vocab: int = VOCAB) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(1)
    return GPT2LMHeadModel(config)


def tiny_gemma2(vocab: int = VOCAB) -> Gemma2ForCausalLM:
    config = Gemma2Config(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, final_logit_softcapping=5.0,
    )  # fmt: skip
    torch.manual_seed(1)
    return Gemma2ForCausalLM(config)


def batch(vocab: int = VOCAB, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :6] = IGNORE_INDEX  # prompts
    labels[3] = IGNORE_INDEX  # a row with nothing scored
    return ids, mask, labels


def test_split_lm_head_takes_plain_heads_and_refuses_the_rest():
    llama = make_tiny_model(VOCAB)
    backbone, head = split_lm_head(llama)
    assert backbone is llama.model and head is llama.lm_head
    assert split_lm_head(tiny_gpt2())[0].__class__.__name__ == "GPT2Model"
    assert split_lm_head(tiny_gemma2()) is None  # soft-capped logits
    assert split_lm_head(AllLogits(llama)) is None  # not a transformers model
    lora = get_peft_model(make_tiny_model(VOCAB), LoraConfig(r=2, target_modules=["q_proj"]))
    backbone, head = split_lm_head(lora)
    assert type(head) is torch.nn.Linear and "lora" in str(backbone).lower()
    on_head = get_peft_model(make_tiny_model(VOCAB), LoraConfig(r=2, target_modules=["lm_head"]))
    assert split_lm_head(on_head) is None  # the adapter lives in the head


def tiny_lora():
    """LoRA adapters with random (non-zero) B, so that they change the log-probs."""
    torch.manual_seed(4)  # peft draws the adapters from the global generator
    return get_peft_model(
        make_tiny_model(VOCAB, seed=2),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "llama_lora"])
@pytest.mark.parametrize("average", [False, True], ids=["sum", "mean"])
def test_fused_path_equals_the_logits_path(family, average, monkeypatch):
    builders = {
        "llama": lambda: make_tiny_model(VOCAB, seed=2),
        "gpt2": tiny_gpt2,
        "gemma2": tiny_gemma2,
        "llama_lora": tiny_lora,
    }
    ids, mask, labels = batch()
    upstream = torch.tensor([1.0, -2.0, 0.5, 3.0])
    tiles = []
    project = mrpo.logprobs.fused_head._project_into
    monkeypatch.setattr(
        mrpo.logprobs.fused_head,
        "_project_into",
        lambda tile, h, *a: tiles.append(h.shape[0]) or project(tile, h, *a),
    )
    results = {}
    for fused in (True, False):
        model = builders[family]()
        model.train()
        out = model_sequence_logprobs(
            model, ids, mask, labels, average=average, fused_head=fused, head_chunk_tokens=4
        )
        (out.logps * upstream).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results[fused] = (out, grads)
    (fused, fused_grads), (plain, plain_grads) = results[True], results[False]
    torch.testing.assert_close(fused.logps, plain.logps, atol=1e-5, rtol=0)
    assert fused.num_tokens.tolist() == plain.num_tokens.tolist() == [6, 6, 6, 0]
    assert fused.logps[3] == 0
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    if family == "gemma2":
        assert tiles == []  # soft-capped: the model's own head ran
    else:
        # Only the 18 scored positions were projected, at most 4 rows a tile, twice (backward).
        assert sum(tiles) == 2 * 18 and max(tiles) == 4


def test_out_of_vocabulary_labels_raise_on_the_fused_path():
    ids, mask, labels = batch()
    labels[0, -1] = VOCAB
    with pytest.raises(ValueError, match=rf"token ids in \[0, {VOCAB}\)"):
        model_sequence_logprobs(make_tiny_model(VOCAB), ids, mask, labels)
