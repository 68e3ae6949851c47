"""LD-DPO (``loss.ld_alpha``): hand values, α = 1 is DPO bit for bit, and the shared-length
sums of every layout and path equal the padded layout's and the totals of the pairs cut to
their shared length. Parity with TRL's own ``ld_alpha`` is in ``tests/test_trl_parity.py``;
the reference cache, refusals and a training run in ``tests/test_ld_dpo_runs.py``."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mrpo.data.collate import PreferenceCollator
from mrpo.data.layout import PairLayout
from mrpo.data.types import TokenizedPair
from mrpo.logprobs import (
    batch_sequence_logprobs,
    ld_active,
    ld_logps,
    owner_ranks,
    pair_shared_tokens,
    reduce_rows,
    shared_prefix_mask,
)
from mrpo.logprobs.packed_logprobs import reduce_by_owner
from mrpo.objectives import get_objective
from mrpo.references.logps import RefLogps
from mrpo.references.scoring import score_pairs
from mrpo.references.table import RefTable
from mrpo.training.module import PreferenceModule
from support.models import make_tiny_family_model

VOCAB = 41
LAYOUTS = {
    "prefix_shared": PairLayout(share_prefix=True),
    "packed": PairLayout(pack=True),
    "shared_packed": PairLayout(share_prefix=True, pack=True),
    "packed_rows_of_12": PairLayout(pack=True, row_tokens=12),
}

# One pair, hand-worked: the chosen response has 3 tokens, the rejected one 2 (shared: 2).
POLICY = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
REFERENCE = torch.tensor([[-2.0, -2.0, -2.0], [-1.5, -1.5, 0.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_shared_lengths_masks_and_ranks_by_hand() -> None:
    counts = torch.tensor([3, 1, 4, 2, 5, 4])  # chosen (3, 1, 4), rejected (2, 5, 4)
    assert pair_shared_tokens(counts).tolist() == [2, 1, 4, 2, 1, 4]
    mask = torch.tensor([[False, True, True, True], [True, False, True, False]])
    assert shared_prefix_mask(mask, torch.tensor([2, 1])).tolist() == [
        [False, True, True, False],
        [True, False, False, False],
    ]
    assert owner_ranks(torch.tensor([1, 0, 1, 0, 0, 2]), 3).tolist() == [0, 0, 1, 1, 2, 0]
    with pytest.raises(ValueError, match=r"\(2B,\)"):
        pair_shared_tokens(torch.tensor([1, 2, 3]))


def test_ld_logps_by_hand() -> None:
    out = reduce_rows(POLICY, MASK, False, pair_shared_tokens(MASK.sum(dim=1)))
    assert out.logps.tolist() == [-6.0, -2.0]
    assert out.shared_logps is not None and out.shared_logps.tolist() == [-3.0, -2.0]
    # ℓ_public + α(ℓ − ℓ_public): −3 + 0.5·(−3) and −2 + 0.5·0.
    assert ld_logps(out.logps, out.shared_logps, 0.5).tolist() == [-4.5, -2.0]
    assert ld_logps(out.logps, out.shared_logps, 0.0).tolist() == [-3.0, -2.0]
    mean = reduce_rows(POLICY, MASK, True, pair_shared_tokens(MASK.sum(dim=1)))
    assert mean.shared_logps is not None and mean.shared_logps.tolist() == [-1.0, -1.0]
    # The packed reduction: the same sums from a flat token list in any interleaving.
    owner = torch.tensor([1, 0, 0, 1, 0])
    tokens = torch.tensor([-1.0, -1.0, -2.0, -1.0, -3.0])
    packed = reduce_by_owner(tokens, owner, 2, False, torch.tensor([2, 2]))
    assert packed.logps.tolist() == [-6.0, -2.0] and packed.shared_logps.tolist() == [-3.0, -2.0]
    with pytest.raises(ValueError, match="shared length"):
        ld_logps(out.logps, None, 0.5)


def test_ld_dpo_loss_by_hand() -> None:
    """β = 1, sigmoid. LD (α = 0.5): policy −4.5 / −2, reference −5 / −3, h = −0.5;
    without: policy −6 / −2, reference −6 / −3, h = −1."""
    shared = pair_shared_tokens(MASK.sum(dim=1))
    policy, ref = (
        reduce_rows(POLICY, MASK, False, shared),
        reduce_rows(REFERENCE, MASK, False, shared),
    )
    for alpha, h in ((0.5, -0.5), (None, -1.0), (1.0, -1.0)):
        objective = get_objective("dpo", beta=1.0, ld_alpha=alpha)
        p = ld_logps(policy.logps, policy.shared_logps, alpha)
        r = ld_logps(ref.logps, ref.shared_logps, alpha)
        out = objective(p[:1], p[1:], r[None, :1], r[None, 1:])
        assert out.loss.item() == pytest.approx(math.log1p(math.exp(-h)), abs=1e-6)
        assert out.chosen_rewards.item() == pytest.approx(float(p[0] - r[0]))


def test_alpha_one_and_none_are_dpo_bit_for_bit() -> None:
    total, shared = torch.randn(8), torch.randn(8)
    assert ld_logps(total, shared, 1.0) is total and ld_logps(total, None, None) is total
    assert not ld_active(1.0) and not ld_active(None) and ld_active(0.0)
    ref = RefLogps(
        torch.arange(4),
        torch.randn(4),
        torch.randn(4),
        torch.tensor([3, 1, 2, 5]),
        torch.tensor([2, 2, 4, 1]),
        chosen_shared=torch.randn(4),
        rejected_shared=torch.randn(4),
    )
    plain = RefTable.from_logps([ref], length_normalize=[True], names=["r"])
    one = RefTable.from_logps([ref], length_normalize=[True], names=["r"], ld_alpha=1.0)
    assert torch.equal(plain.chosen, one.chosen) and torch.equal(plain.rejected, one.rejected)


def test_alpha_one_trains_as_dpo_bit_for_bit() -> None:
    """The module's log-probs, loss and gradients with ld_alpha = 1 equal those without."""
    model = make_tiny_family_model("llama", VOCAB, seed=5)
    batch = PreferenceCollator(0)(random_pairs())
    results = []
    for alpha in (None, 1.0, 0.5):
        objective = get_objective("dpo", beta=0.1, ld_alpha=alpha)
        module = PreferenceModule(model, None, objective, torch.optim.SGD)  # type: ignore[arg-type]
        model.zero_grad()
        chosen, rejected = module.forward_logps(batch)
        refs = torch.zeros(1, batch.num_pairs)
        loss = objective(chosen, rejected, refs - 1.0, refs - 2.0).loss
        loss.backward()
        results.append(
            (chosen.detach(), loss.detach(), model.model.embed_tokens.weight.grad.clone())
        )
    (c0, l0, g0), (c1, l1, g1), (c5, l5, _) = results
    assert torch.equal(c0, c1) and torch.equal(l0, l1) and torch.equal(g0, g1)
    assert not torch.equal(c0, c5) and not torch.equal(l0, l5)


def random_pairs(n: int = 6, seed: int = 0) -> list[TokenizedPair]:
    """Pairs of varied lengths, equal-length and one-token responses among them."""
    gen = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> tuple[int, ...]:
        size = int(torch.randint(low, high + 1, (), generator=gen))
        return tuple(torch.randint(3, VOCAB, (size,), generator=gen).tolist())

    pairs = [TokenizedPair(ids(1, 9), ids(1, 8), ids(1, 8), index=i) for i in range(n)]
    pairs[1] = replace(pairs[1], rejected_ids=(7,))
    pairs[2] = replace(pairs[2], rejected_ids=pairs[2].chosen_ids[::-1])  # equal lengths
    return pairs


def cut_to_shared(pairs: list[TokenizedPair]) -> list[TokenizedPair]:
    """Each pair's responses cut to their shared length (every response token is scored:
    the prompts are not empty)."""
    out = []
    for p in pairs:
        n = min(len(p.chosen_ids), len(p.rejected_ids))
        out.append(replace(p, chosen_ids=p.chosen_ids[:n], rejected_ids=p.rejected_ids[:n]))
    return out


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def family_model(request):
    return make_tiny_family_model(request.param, VOCAB, seed=3)


@pytest.mark.parametrize("fused", [True, False], ids=["fused_head", "logits"])
@pytest.mark.parametrize("average", [False, True], ids=["sum", "mean"])
def test_every_layout_gives_the_padded_shared_sums(family_model, average, fused) -> None:
    pairs = random_pairs()
    options = {"average": average, "fused_head": fused, "pair_shared": True}
    upstream = torch.linspace(-2.0, 3.0, 2 * len(pairs))
    padded = PreferenceCollator(0)(pairs)

    def run(batch):
        family_model.zero_grad()
        out = batch_sequence_logprobs(family_model, batch, **options)
        (ld_logps(out.logps, out.shared_logps, 0.3) * upstream).sum().backward()
        grads = [p.grad.clone() for p in family_model.parameters() if p.grad is not None]
        return out, grads

    base, base_grads = run(padded)
    assert base.shared_logps is not None
    # The padded sums equal the totals of the pairs cut to their shared length (a causal LM's
    # first tokens do not see the later ones), reduced alike.
    with torch.no_grad():
        cut = batch_sequence_logprobs(family_model, PreferenceCollator(0)(cut_to_shared(pairs)))
    # With ``average`` both sums are divided by the full response's token count.
    expected = cut.logps / base.num_tokens.clamp(min=1) if average else cut.logps
    torch.testing.assert_close(base.shared_logps, expected, atol=1e-5, rtol=0)
    # Not vacuous: the unequal pairs' longer responses lose their tail.
    b = len(pairs)
    longer = torch.tensor([len(p.chosen_ids) > len(p.rejected_ids) for p in pairs])
    assert ((base.logps[:b] - base.shared_logps[:b]).abs() > 1e-3)[longer].all()
    for name, layout in LAYOUTS.items():
        out, grads = run(PreferenceCollator(0, layout=layout)(pairs))
        torch.testing.assert_close(out.shared_logps, base.shared_logps, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(out.logps, base.logps, atol=1e-5, rtol=0, msg=name)
        for grad, base_grad in zip(grads, base_grads, strict=True):
            torch.testing.assert_close(grad, base_grad, atol=1e-5, rtol=1e-4, msg=name)


def test_reference_scoring_gives_the_shared_sums_in_every_layout(family_model) -> None:
    pairs = random_pairs(n=7, seed=4)
    padded = score_pairs(family_model, pairs, pad_token_id=0, batch_size=3, pair_shared=True)
    cut = score_pairs(family_model, cut_to_shared(pairs), pad_token_id=0, batch_size=3)
    assert padded.chosen_shared is not None and padded.rejected_shared is not None
    torch.testing.assert_close(padded.chosen_shared, cut.chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.rejected_shared, cut.rejected, atol=1e-5, rtol=0)
    plain = score_pairs(family_model, pairs, pad_token_id=0, batch_size=3)
    assert not plain.has_shared and torch.equal(plain.chosen, padded.chosen)
    for name, layout in LAYOUTS.items():
        scored = score_pairs(
            family_model, pairs, pad_token_id=0, batch_size=2, layout=layout, pair_shared=True
        )
        assert scored.chosen_shared is not None and scored.rejected_shared is not None
        torch.testing.assert_close(
            scored.chosen_shared, padded.chosen_shared, atol=1e-5, rtol=0, msg=name
        )
        torch.testing.assert_close(
            scored.rejected_shared, padded.rejected_shared, atol=1e-5, rtol=0, msg=name
        )
