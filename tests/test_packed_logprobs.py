"""Packed rows (the prompt shared, padding-free packing) give the padded layout's log-probs.

On real tiny models of three families (Llama: rotary; Qwen2: rotary, grouped key/value heads,
q/k/v biases; GPT-2: learned absolute positions), values and gradients of every parameter,
to 1e-5 in float32.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import MistralConfig, MistralForCausalLM

from mrpo.data.collate import PreferenceCollator
from mrpo.data.layout import PADDED, PairLayout, layout_for, pair_costs
from mrpo.data.types import TokenizedPair
from mrpo.logprobs import (
    Block,
    batch_sequence_logprobs,
    pack_blocks,
    packed_mask_builder,
    packed_sequence_logprobs,
)
from mrpo.logprobs.attention import additive_mask, allowed_attention, block_mask
from mrpo.logprobs.packed_rows import assign_rows
from mrpo.models import enable_gradient_checkpointing
from mrpo.references.scoring import score_pairs
from support.models import AllLogits, make_tiny_family_model

VOCAB = 41
FAMILIES = ("llama", "qwen2", "gpt2")
LAYOUTS = {
    "shared_prefix": PairLayout(share_prefix=True),
    "packed": PairLayout(pack=True),
    "shared_packed": PairLayout(share_prefix=True, pack=True),
    "one_row": PairLayout(share_prefix=True, pack=True, row_tokens=10_000),
    "packed_rows_of_12": PairLayout(pack=True, row_tokens=12),
}


def random_pairs(n: int = 6, seed: int = 0) -> list[TokenizedPair]:
    """Pairs of varied lengths, one-token responses and a one-token prompt among them."""
    rng = random.Random(seed)

    def ids(low: int, high: int) -> tuple[int, ...]:
        return tuple(rng.randrange(3, VOCAB) for _ in range(rng.randint(low, high)))

    pairs = [TokenizedPair(ids(1, 9), ids(1, 8), ids(1, 8), index=i) for i in range(n)]
    pairs[1] = replace(pairs[1], prompt_ids=pairs[1].prompt_ids[:1], rejected_ids=(7,))
    return pairs


def logps_and_grads(model, batch, upstream, **options):
    model.zero_grad()
    out = batch_sequence_logprobs(model, batch, **options)
    (out.logps * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same(out, grads, base, base_grads):
    torch.testing.assert_close(out.logps, base.logps, atol=1e-5, rtol=0)
    assert out.num_tokens.tolist() == base.num_tokens.tolist()
    assert grads.keys() == base_grads.keys() and grads
    for name, grad in base_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return make_tiny_family_model(request.param, VOCAB, seed=3)


@pytest.mark.parametrize("fused", [True, False], ids=["fused_head", "logits"])
@pytest.mark.parametrize("average", [False, True], ids=["sum", "mean"])
@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_packed_layouts_equal_the_padded_layout(family_model, layout, average, fused):
    pairs = random_pairs()
    upstream = torch.linspace(-2.0, 3.0, 2 * len(pairs))  # a different weight per sequence
    options = {"average": average, "fused_head": fused}
    padded = PreferenceCollator(0)(pairs)
    base, base_grads = logps_and_grads(family_model, padded, upstream, **options)
    packed = PreferenceCollator(0, layout=LAYOUTS[layout])(pairs)
    assert packed.packed is not None
    out, grads = logps_and_grads(family_model, packed, upstream, **options)
    assert_same(out, grads, base, base_grads)
    assert packed.response_token_counts().tolist() == padded.response_token_counts().tolist()


def test_the_layouts_save_what_they_say(family_model):
    pairs = random_pairs()
    padded = PreferenceCollator(0)(pairs)
    shared = PreferenceCollator(0, layout=LAYOUTS["shared_prefix"])(pairs)
    one_row = PreferenceCollator(0, layout=LAYOUTS["one_row"])(pairs)
    prompts = sum(len(p.prompt_ids) for p in pairs)
    # Each prompt once instead of twice, and no padding at all in one row.
    assert int(shared.attention_mask.sum()) == int(padded.attention_mask.sum()) - prompts
    assert one_row.input_ids.shape == (1, int(shared.attention_mask.sum()))
    shared_costs = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    assert pair_costs(pairs, LAYOUTS["shared_prefix"]) == shared_costs
    assert sum(shared_costs) == one_row.input_ids.shape[1]
    assert pair_costs(pairs, PADDED) == [
        2 * (len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))) for p in pairs
    ]


def test_a_rejected_response_that_saw_the_chosen_one_would_differ(family_model):
    """The equality above is not vacuous: a plain causal mask over ``prompt, chosen, rejected``
    (the rejected tokens seeing the chosen ones) changes the rejected log-probs."""
    pairs = random_pairs()
    packed = PreferenceCollator(0, layout=LAYOUTS["shared_prefix"])(pairs).packed
    with torch.no_grad():
        right = packed_sequence_logprobs(family_model, packed)
        leaky = packed_sequence_logprobs(
            family_model, replace(packed, branch=packed.branch.clamp(max=1))
        )
    b = len(pairs)
    torch.testing.assert_close(leaky.logps[:b], right.logps[:b], atol=1e-5, rtol=0)
    assert (leaky.logps[b:] - right.logps[b:]).abs().max() > 1e-2


TRAINING_LAYOUTS = {"padded": PADDED, "prefix_shared": LAYOUTS["shared_prefix"], **LAYOUTS}


@pytest.mark.parametrize("layout", ["padded", "prefix_shared", "packed", "shared_packed"])
@pytest.mark.parametrize("family", FAMILIES)
def test_eager_attention_trains_like_padded_sdpa_in_every_layout(family, layout):
    """Eager attention, the other implementation that trains on the CPU, takes the same
    additive masks: its log-probs and gradients equal padded sdpa's (a separate model of the
    same weights)."""
    model = make_tiny_family_model(family, VOCAB, seed=5, attn_implementation="eager")
    sdpa = make_tiny_family_model(family, VOCAB, seed=5)
    pairs = random_pairs(seed=1)
    upstream = torch.linspace(-1.0, 2.0, 2 * len(pairs))
    base, base_grads = logps_and_grads(sdpa, PreferenceCollator(0)(pairs), upstream)
    batch = PreferenceCollator(0, layout=TRAINING_LAYOUTS[layout])(pairs)
    assert (batch.packed is None) == (layout == "padded")
    assert packed_mask_builder(model) is additive_mask
    assert_same(*logps_and_grads(model, batch, upstream), base, base_grads)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lora_and_gradient_checkpointing_with_shared_prefixes(family):
    torch.manual_seed(4)  # peft draws the adapters from the global generator
    model = get_peft_model(
        make_tiny_family_model(family, VOCAB, seed=2),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.train()
    enable_gradient_checkpointing(model)
    pairs = random_pairs(seed=2)
    upstream = torch.linspace(1.0, 2.0, 2 * len(pairs))
    base, base_grads = logps_and_grads(model, PreferenceCollator(0)(pairs), upstream)
    assert any("lora" in name for name in base_grads)
    batch = PreferenceCollator(0, layout=LAYOUTS["shared_packed"])(pairs)
    assert_same(*logps_and_grads(model, batch, upstream), base, base_grads)


def test_reference_scoring_is_the_same_in_every_layout(family_model):
    pairs = random_pairs(n=7, seed=4)
    padded = score_pairs(family_model, pairs, pad_token_id=0, batch_size=3)
    for layout in LAYOUTS.values():
        scored = score_pairs(family_model, pairs, pad_token_id=0, batch_size=3, layout=layout)
        torch.testing.assert_close(scored.chosen, padded.chosen, atol=1e-5, rtol=0)
        torch.testing.assert_close(scored.rejected, padded.rejected, atol=1e-5, rtol=0)
        assert torch.equal(scored.chosen_tokens, padded.chosen_tokens)
        assert torch.equal(scored.rejected_tokens, padded.rejected_tokens)


def test_models_outside_the_allow_list_keep_the_padded_layout():
    llama = make_tiny_family_model("llama", VOCAB)
    assert layout_for(llama, LAYOUTS["shared_packed"]) == LAYOUTS["shared_packed"]
    sliding = MistralForCausalLM(
        MistralConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, sliding_window=8,
        )
    )  # fmt: skip
    assert packed_mask_builder(sliding) is None  # its window would be replaced by the mask
    assert layout_for(sliding, LAYOUTS["shared_packed"]) == PADDED
    assert packed_mask_builder(AllLogits(llama)) is None  # not a transformers model
    llama.config._attn_implementation = "flash_attention_2"  # takes no arbitrary mask
    assert packed_mask_builder(llama) is None
    with pytest.raises(ValueError, match="cannot take packed rows"):
        packed_sequence_logprobs(
            sliding, PreferenceCollator(0, layout=LAYOUTS["packed"])(random_pairs()).packed
        )


def test_pack_blocks_by_hand():
    blocks = [
        Block((5, 6), (((7, 8), 0), ((9,), 2))),  # a pair: prompt 5 6, chosen 7 8, rejected 9
        Block((), (((3, 4), 1),)),  # no shared tokens: its first token is not scored
    ]
    rows = pack_blocks(blocks, 3, pad_token_id=0, row_tokens=8)
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 9, 3, 4]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1]]
    assert rows.segment.tolist() == [[0, 0, 0, 0, 0, 1, 1]]
    assert rows.branch.tolist() == [[0, 0, 1, 1, 2, 1, 1]]
    # 7 <- 6 (prompt end), 8 <- 7, 9 <- 6 (prompt end, not the chosen 8), 4 <- 3.
    assert rows.predictor.tolist() == [1, 2, 1, 5]
    assert rows.targets.tolist() == [7, 8, 9, 4]
    assert rows.owner.tolist() == [0, 0, 2, 1]
    assert rows.token_counts().tolist() == [2, 1, 1]
    apart = pack_blocks(blocks, 3, pad_token_id=0)  # one block per row, padded at the end
    assert apart.input_ids.tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert apart.segment[1].tolist() == [0, 0, -1, -1, -1]
    assert apart.predictor.tolist() == [1, 2, 1, 5]  # flat index: row 1 * width 5 + 0
    with pytest.raises(ValueError, match="sequence id"):
        pack_blocks([Block((1,), (((2,), 3),))], 3, pad_token_id=0)


def test_attention_rule_by_hand():
    rows = pack_blocks(
        [Block((5, 6), (((7, 8), 0), ((9,), 1))), Block((2,), (((3,), 2),))],
        3,
        pad_token_id=0,
        row_tokens=9,
        pad_to_multiple_of=8,
    )
    allowed = allowed_attention(rows.segment, rows.branch)[0].int().tolist()
    assert allowed == [
        # 5  6  7  8  9  2  3  pad
        [1, 0, 0, 0, 0, 0, 0, 0],  # 5
        [1, 1, 0, 0, 0, 0, 0, 0],  # 6
        [1, 1, 1, 0, 0, 0, 0, 0],  # 7 (chosen)
        [1, 1, 1, 1, 0, 0, 0, 0],  # 8 (chosen)
        [1, 1, 0, 0, 1, 0, 0, 0],  # 9 (rejected): the prompt and itself
        [0, 0, 0, 0, 0, 1, 0, 0],  # 2 (next block)
        [0, 0, 0, 0, 0, 1, 1, 0],  # 3
        [0, 0, 0, 0, 0, 0, 0, 1],  # padding: itself only
    ]
    mask = additive_mask(rows.segment, rows.branch, torch.float32)
    assert mask.shape == (1, 1, 8, 8)
    assert ((mask == 0) == torch.tensor(allowed, dtype=torch.bool)).all()


def test_assign_rows_first_fit_decreasing():
    assert assign_rows([3, 5, 2, 4], capacity=7) == [[1, 2], [3, 0]]
    assert assign_rows([9, 2], capacity=4) == [[0], [1]]  # too long: a row of its own
    assert assign_rows([3, 5], capacity=None) == [[0], [1]]
    with pytest.raises(ValueError, match="capacity"):
        assign_rows([1], capacity=0)


@pytest.mark.slow
def test_flex_attention_block_masks_give_the_same_values():
    """FlexAttention (the GPU path) takes a BlockMask; on a CPU it runs compiled, forward only."""
    model = make_tiny_family_model("llama", VOCAB, seed=3, attn_implementation="flex_attention")
    assert packed_mask_builder(model) is block_mask
    pairs = random_pairs()
    with torch.no_grad():
        base = batch_sequence_logprobs(model, PreferenceCollator(0)(pairs))
        flex = batch_sequence_logprobs(
            model, PreferenceCollator(0, layout=LAYOUTS["one_row"])(pairs)
        )
    torch.testing.assert_close(flex.logps, base.logps, atol=1e-5, rtol=0)


def test_the_policy_loads_with_the_attention_it_is_given(compose_train):
    from mrpo.cli.train import load_policy
    from mrpo.config import TrainConfig, to_dataclass

    cfg = to_dataclass(compose_train(["model.attn_implementation=eager"]), TrainConfig)
    policy, _ = load_policy(cfg)
    assert policy.config._attn_implementation == "eager"
    assert packed_mask_builder(policy) is additive_mask
