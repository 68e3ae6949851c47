"""Reference weights: ARWC, VDW/VAW, and the weight strategy objects (incl. stateful ones)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mrpo.errors import OptionError
from mrpo.objectives import (
    ThompsonSampling,
    arwc_weights,
    get_objective,
    make_weighting,
    vaw_weights,
    vdw_weights,
)
from mrpo.objectives.weighting.bandit import sample_beta
from mrpo.objectives.weighting.formulas import one_hot_argmax

F64 = torch.float64


def refs(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def test_arwc_hand_values() -> None:
    # Δ = (1, -2, 0): denominator 3 + 1e-6; references 2..K get |Δ_k| / denominator and the
    # primary the rest, (1 + 1e-6) / (3 + 1e-6).
    weights = arwc_weights(refs((-1.0,), (-4.0,), (-5.0,)), refs((-2.0,), (-2.0,), (-5.0,)))
    denominator = 3 + 1e-6
    expected = [(1 + 1e-6) / denominator, 2 / denominator, 0.0]
    assert weights.flatten().tolist() == pytest.approx(expected, abs=1e-15)


def test_arwc_zero_over_zero_puts_all_weight_on_the_primary() -> None:
    same = refs((-3.0, -1e4), (-7.0, 0.0))
    assert arwc_weights(same, same).tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_arwc_matches_the_authors_k2_alpha() -> None:
    # The authors' code: α = |Δ_2| / (|Δ_1| + |Δ_2| + 1e-6) on reference 2, 1 - α on reference 1.
    chosen, rejected = refs((-3.0,), (-2.0,)), refs((-4.5,), (-6.0,))
    alpha = 4.0 / (1.5 + 4.0 + 1e-6)
    assert arwc_weights(chosen, rejected).flatten().tolist() == pytest.approx(
        [1 - alpha, alpha], abs=1e-15
    )


# Validation split, K = 2, N = 3 (log-probs summed; token counts per reference).
VAL_CHOSEN = refs((-4.0, -6.0, -3.0), (-10.0, -2.0, -1.5))
VAL_REJECTED = refs((-6.0, -4.0, -3.0), (-10.0, -8.0, -3.0))
CHOSEN_TOKENS = refs((2, 2, 1), (5, 1, 3))
REJECTED_TOKENS = refs((2, 2, 1), (2, 4, 3))
# Δ̄_1 = (-2 + 3, -3 + 2, -3 + 3) = (1, -1, 0)
# Δ̄_2 = (-2 + 5, -2 + 2, -0.5 + 1) = (3, 0, 0.5)


def test_vdw_hand_values() -> None:
    # Σ|Δ̄_1| = 2, Σ|Δ̄_2| = 3.5 -> (2/5.5, 3.5/5.5)
    weights = vdw_weights(VAL_CHOSEN, VAL_REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS)
    assert weights.tolist() == pytest.approx([2 / 5.5, 3.5 / 5.5], abs=1e-12)


def test_vaw_hand_values() -> None:
    # accuracies mean 1[Δ̄ > 0]: reference 1: 1/3 (a tie counts as wrong), reference 2: 2/3
    weights = vaw_weights(VAL_CHOSEN, VAL_REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS)
    assert weights.tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-12)


def test_validation_weights_all_zero_fall_back_to_uniform() -> None:
    tokens = torch.ones(3, 2)
    same = -torch.ones(3, 2)
    assert vdw_weights(same, same, tokens, tokens).tolist() == pytest.approx([1 / 3] * 3)
    assert vaw_weights(same, same - 1, tokens, tokens).tolist() == pytest.approx([1 / 3] * 3)


def test_validation_weights_reject_bad_token_counts_and_shapes() -> None:
    with pytest.raises(ValueError, match="chosen_tokens must be > 0"):
        vdw_weights(VAL_CHOSEN, VAL_REJECTED, CHOSEN_TOKENS * 0, REJECTED_TOKENS)
    with pytest.raises(ValueError, match=r"rejected_tokens must have shape \(K, N\)"):
        vaw_weights(VAL_CHOSEN, VAL_REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS[:, :2])


@pytest.mark.parametrize("name", ["vdw", "vaw"])
def test_offline_strategy_needs_fit_then_shares_its_weights(name: str) -> None:
    objective = get_objective("mrpo", weighting=name)
    pc, rc = torch.zeros(4, dtype=F64), torch.zeros(2, 4, dtype=F64)
    with pytest.raises(RuntimeError, match="before fit"):
        objective(pc, pc, rc, rc)
    fitted = objective.weighting.fit(VAL_CHOSEN, VAL_REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS)
    out = objective(pc, pc, rc, rc)
    torch.testing.assert_close(out.weights, fitted.expand(4, 2))
    restored = get_objective("mrpo", weighting=name)
    restored.load_state_dict(objective.state_dict())
    torch.testing.assert_close(restored(pc, pc, rc, rc).weights, out.weights)
    with pytest.raises(ValueError, match=f"weighting '{name}' was fitted for K=2"):
        objective(pc, pc, torch.zeros(3, 4), torch.zeros(3, 4))


# -- sliding window -----------------------------------------------------------------------------
# Batch 1: Δ_1 = (1, 2), Δ_2 = (3, 2): ARWC rows ≈ (1/4, 3/4) and (1/2, 1/2), mean (3/8, 5/8).
# Batch 2: Δ_1 = (0, 0), Δ_2 = (5, 1): rows ≈ (0, 1), mean ≈ (0, 1).
# Batch 3: all margins 0: rows (1, 0) (the 0/0 rule), mean (1, 0).
SLIDING_BATCHES = [
    (refs((-1.0, -2.0), (-1.0, -1.0)), refs((-2.0, -4.0), (-4.0, -3.0))),
    (refs((-1.0, -1.0), (-1.0, -2.0)), refs((-1.0, -1.0), (-6.0, -3.0))),
    (refs((-1.0, -1.0), (-2.0, -2.0)), refs((-1.0, -1.0), (-2.0, -2.0))),
]


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (1, [[0.5, 0.5], [0.375, 0.625], [0.0, 1.0], [1.0, 0.0]]),
        (2, [[0.5, 0.5], [0.375, 0.625], [0.1875, 0.8125], [0.5, 0.5]]),
    ],
)
def test_sliding_window_sequence(window: int, expected: list[list[float]]) -> None:
    objective = get_objective("mrpo", weighting="sliding_window", window=window)
    policy = torch.zeros(2, dtype=F64)
    used = []
    for chosen, rejected in SLIDING_BATCHES:
        # A validation call never changes the state.
        objective(policy, policy, chosen, rejected)
        out = objective(policy, policy, chosen, rejected)
        objective.observe(chosen, rejected)  # a training batch, recorded after its weights
        assert torch.equal(out.weights[0], out.weights[1])  # one weight vector per batch
        used.append(out.weights[0].tolist())
    used.append(objective.weighting.current(2).tolist())
    for got, want in zip(used, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # argmax of the windowed weights above; batch 1's uniform weights tie: the primary.
        (1, [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]),
        (2, [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]),
    ],
)
def test_one_hot_sliding_window_takes_the_argmax_of_the_window(
    window: int, expected: list[list[float]]
) -> None:
    objective = get_objective("multi_dpo", weighting="sliding_window", window=window, one_hot=True)
    policy = torch.zeros(2, dtype=F64)
    used = []
    for chosen, rejected in SLIDING_BATCHES:
        used.append(objective(policy, policy, chosen, rejected).weights[0])
        objective.observe(chosen, rejected)
    used.append(objective.weighting.current(2))
    assert [u.tolist() for u in used] == expected
    # One-hot weights make multi-DPO a single-reference DPO step against the argmax reference.
    chosen, rejected = SLIDING_BATCHES[0]
    one_hot = objective(policy, policy, chosen, rejected)  # uses the last window: reference 0
    dpo = get_objective("dpo")(policy, policy, chosen[:1], rejected[:1])
    torch.testing.assert_close(one_hot.losses, dpo.losses)


def test_one_hot_argmax_hand_values() -> None:
    weights = torch.tensor([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2], [0.0, 0.0, 1.0]], dtype=F64)
    assert one_hot_argmax(weights).tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert one_hot_argmax(torch.tensor([0.1, 0.6, 0.3])).tolist() == [0.0, 1.0, 0.0]


def test_one_hot_must_be_a_boolean() -> None:
    with pytest.raises(OptionError) as info:
        make_weighting("sliding_window", one_hot="yes")
    assert info.value.option == "one_hot"


def test_sliding_window_state_round_trip() -> None:
    first = make_weighting("sliding_window", window=2)
    for chosen, rejected in SLIDING_BATCHES[:2]:
        first.observe(chosen, rejected)
    second = make_weighting("sliding_window", window=2)
    second.load_state_dict(first.state_dict())
    first.observe(*SLIDING_BATCHES[2])
    second.observe(*SLIDING_BATCHES[2])
    assert second.current(2).tolist() == first.current(2).tolist()


# -- Thompson sampling --------------------------------------------------------------------------
def drive(bandit: ThompsonSampling, steps: int) -> list[int]:
    """Select an arm, then reward arm 2 always and the others never."""
    arms = []
    for _ in range(steps):
        arm = bandit.select()
        bandit.update(arm, improved=arm == 2)
        arms.append(arm)
    return arms


def test_thompson_is_reproducible_with_a_seed_and_depends_on_it() -> None:
    a = drive(ThompsonSampling(seed=7, num_refs=3), 30)
    b = drive(ThompsonSampling(seed=7, num_refs=3), 30)
    c = drive(ThompsonSampling(seed=8, num_refs=3), 30)
    assert a == b
    assert a != c


def test_thompson_state_dict_round_trip() -> None:
    objective = get_objective("mrpo", weighting="thompson", seed=3, num_refs=3)
    drive(objective.weighting, 10)
    state = objective.state_dict()
    continued = drive(objective.weighting, 10)
    resumed = get_objective("mrpo", weighting="thompson", seed=99, num_refs=3)
    resumed.load_state_dict(state)
    assert drive(resumed.weighting, 10) == continued
    assert resumed.weighting.alpha == objective.weighting.alpha


def test_thompson_posterior_update_and_one_hot_weights() -> None:
    bandit = ThompsonSampling(prior=(5, 5), seed=0, num_refs=3)
    bandit.update(2, improved=True)
    bandit.update(0, improved=False)
    assert (bandit.alpha, bandit.beta) == ([5.0, 5.0, 6.0], [6.0, 5.0, 5.0])
    arms = drive(bandit, 200)
    assert arms[-100:].count(2) >= 95  # the always-improving arm wins
    objective = get_objective("multi_dpo", weighting=bandit)
    policy, reference = torch.zeros(3, dtype=F64), -torch.rand(3, 3, dtype=F64)
    bandit.current_arm = 1
    out = objective(policy, policy, reference, reference)
    assert out.weights.tolist() == [[0.0, 1.0, 0.0]] * 3


def test_thompson_errors_before_select_and_without_num_refs() -> None:
    with pytest.raises(RuntimeError, match="does not know the number of references"):
        ThompsonSampling().select()
    objective = get_objective("mrpo", weighting="thompson")
    policy, reference = torch.zeros(2), torch.zeros(2, 2)
    with pytest.raises(RuntimeError, match="before select"):
        objective(policy, policy, reference, reference)
    assert objective.weighting.num_refs is None  # a batch only checks K, it sizes nothing
    objective = get_objective("mrpo", weighting="thompson", num_refs=2)
    with pytest.raises(RuntimeError, match="before select"):
        objective(policy, policy, reference, reference)
    with pytest.raises(ValueError, match=r"arm must be an int in \[0, 2\)"):
        objective.weighting.update(2, improved=True)


def test_k_is_taken_when_the_objective_is_built_and_only_checked_per_batch() -> None:
    objective = get_objective("mrpo", weighting="thompson", num_refs=3)
    assert (objective.weighting.alpha, objective.weighting.beta) == ([5.0] * 3, [5.0] * 3)
    objective.weighting.select()
    policy, reference = torch.zeros(2), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="has 3 arms, got K=2"):
        objective(policy, policy, reference, reference)
    with pytest.raises(ValueError, match="has 3 arms, got K=2"):
        objective.check_num_refs(2)
    assert objective.weighting.num_refs == 3
    with pytest.raises(OptionError) as info:  # the check names the option that does not fit
        get_objective("multi_dpo", weighting="fixed", fixed_weights=[1, 1]).check_num_refs(3)
    assert info.value.option == "fixed_weights"


@pytest.mark.parametrize(("a", "b"), [(2.0, 6.0), (0.5, 0.5), (5.0, 5.0)])
def test_beta_sampler_mean(a: float, b: float) -> None:
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_beta(a, b, generator) for _ in range(3000)])
    assert ((draws >= 0) & (draws <= 1)).all()
    sd = (a * b / ((a + b) ** 2 * (a + b + 1))) ** 0.5
    assert draws.mean().item() == pytest.approx(a / (a + b), abs=4 * sd / 3000**0.5)


# -- every strategy: α >= 0, rows sum to 1 ------------------------------------------------------
def strategy_instances(num_refs: int):
    vdw = make_weighting("vdw")
    vaw = make_weighting("vaw")
    gen = torch.Generator().manual_seed(num_refs)
    val = -torch.rand(4, num_refs, 5, generator=gen, dtype=F64) * 10
    tokens = torch.randint(1, 5, (num_refs, 5), generator=gen)
    vdw.fit(val[0], val[1], tokens, tokens)
    vaw.fit(val[2], val[3], tokens, tokens)
    sliding = make_weighting("sliding_window")
    sliding.observe(val[0], val[1])
    one_hot = make_weighting("sliding_window", window=2, one_hot=True)
    one_hot.observe(val[2], val[3])
    thompson = ThompsonSampling(num_refs=num_refs)
    thompson.select()
    fixed = make_weighting("fixed", fixed_weights=[0.0] * (num_refs - 1) + [2.0])
    others = [make_weighting(n) for n in ("uniform", "arwc", "primary")]
    return [vdw, vaw, sliding, one_hot, thompson, fixed, *others]


logp = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.data())
def test_every_strategy_gives_a_distribution(num_refs: int, batch: int, data) -> None:
    n = num_refs * batch
    chosen = torch.tensor(data.draw(st.lists(logp, min_size=n, max_size=n)), dtype=F64)
    rejected = (
        chosen.clone()
        if data.draw(st.booleans())
        else torch.tensor(data.draw(st.lists(logp, min_size=n, max_size=n)), dtype=F64)
    )  # equal log-probs: the 0/0 case of ARWC
    chosen, rejected = chosen.reshape(num_refs, batch), rejected.reshape(num_refs, batch)
    for strategy in strategy_instances(num_refs):
        weights = strategy.weights(chosen, rejected)
        assert weights.shape == (batch, num_refs), strategy
        assert (weights >= 0).all(), strategy
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(batch, dtype=F64))
