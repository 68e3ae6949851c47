"""The aggregations of K references: hand values, K = 1 and identical-reference reductions,
their ordering, and every aggregation with every weighting and loss type."""

from __future__ import annotations

import math

import pytest
import torch

from mrpo.errors import OptionError
from mrpo.objectives import (
    AGGREGATIONS,
    LOSS_TYPES,
    arithmetic_reference,
    available_weightings,
    geometric_reference,
    get_objective,
    harmonic_reference,
)

F64 = torch.float64
log = math.log

# One pair, two references, uniform weights, β = 1:
#   πθ(y_w) = 0.5, πθ(y_l) = 0.1;  π_1(y_w) = 0.2, π_2(y_w) = 0.4;  π_1(y_l) = 0.1, π_2(y_l) = 0.4.
# harmonic   π̂(y_w) = 1/(0.5/0.2 + 0.5/0.4) = 1/3.75,  π̂(y_l) = 1/(0.5/0.1 + 0.5/0.4) = 0.16
# geometric  π̄(y_w) = √0.08,                             π̄(y_l) = √0.04 = 0.2
# arithmetic π̃(y_w) = 0.3,                               π̃(y_l) = 0.25
# With z = log(πθ(y_w)/πθ(y_l)) − log(π(y_w)/π(y_l)) and sigmoid loss log(1 + e^{−z}):
#   harmonic:   e^{−z} = (0.16·3.75 ... ) ratio π̂_w/π̂_l = (1/3.75)/0.16 = 5/3 -> e^{−z} = 1/3
#   geometric:  ratio √0.08/0.2 = √2                  -> e^{−z} = √2/5
#   arithmetic: ratio 0.3/0.25 = 1.2                  -> e^{−z} = 1.2/5
#   loss_mixture: ½·log(1 + 2/5) + ½·log(1 + 1/5)      (reference ratios 2 and 1)
POLICY = (log(0.5), log(0.1))
REF_CHOSEN = ((log(0.2),), (log(0.4),))
REF_REJECTED = ((log(0.1),), (log(0.4),))
HAND = {
    "harmonic": (log(1 + 1 / 3), log(0.5 * 3.75)),
    "geometric": (log(1 + math.sqrt(2) / 5), log(0.5 / math.sqrt(0.08))),
    "arithmetic": (log(1 + 1.2 / 5), log(0.5 / 0.3)),
    "loss_mixture": (0.5 * log(1.4) + 0.5 * log(1.2), log(0.5 / math.sqrt(0.08))),
}


def hand_inputs() -> tuple[torch.Tensor, ...]:
    pc, pr = (torch.tensor([v], dtype=F64) for v in POLICY)
    return pc, pr, torch.tensor(REF_CHOSEN, dtype=F64), torch.tensor(REF_REJECTED, dtype=F64)


def test_registry_holds_the_four_aggregations() -> None:
    assert set(AGGREGATIONS) == {"harmonic", "geometric", "arithmetic", "loss_mixture"}


@pytest.mark.parametrize("aggregation", sorted(HAND))
@pytest.mark.parametrize("name", ["mrpo", "multi_dpo"])
def test_hand_values(name: str, aggregation: str) -> None:
    loss, chosen_reward = HAND[aggregation]
    objective = get_objective(
        name, beta=1.0, aggregation=aggregation, weighting="uniform", ctro=False
    )
    out = objective(*hand_inputs())
    assert out.losses.item() == pytest.approx(loss, abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(chosen_reward, abs=1e-12)


def test_pools_by_hand() -> None:
    _, _, chosen, _ = hand_inputs()
    weights = torch.tensor([[0.25, 0.75]], dtype=F64)
    # 1/(0.25/0.2 + 0.75/0.4) = 0.32;  0.2^0.25·0.4^0.75;  0.25·0.2 + 0.75·0.4 = 0.35
    assert harmonic_reference(chosen, weights).exp().item() == pytest.approx(0.32)
    assert geometric_reference(chosen, weights).exp().item() == pytest.approx(0.2**0.25 * 0.4**0.75)
    assert arithmetic_reference(chosen, weights).exp().item() == pytest.approx(0.35)


def random_batch(seed: int, num_refs: int, batch: int = 5, scale: float = 30.0):
    gen = torch.Generator().manual_seed(seed)
    policy = -scale * torch.rand(2, batch, generator=gen, dtype=F64)
    reference = -scale * torch.rand(2, num_refs, batch, generator=gen, dtype=F64)
    weights = torch.rand(batch, num_refs, generator=gen, dtype=F64) + 0.05
    tokens = torch.randint(1, 40, (2, batch), generator=gen)
    return policy[0].clone(), policy[1].clone(), reference[0], reference[1], weights, tokens


def options_for(loss_type: str) -> dict:
    """Options a loss type needs to be valid (EXO needs a positive ε)."""
    return {"label_smoothing": 0.01} if loss_type == "exo_pair" else {}


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_one_reference_equals_dpo_bit_for_bit(aggregation: str, loss_type: str) -> None:
    pc, pr, rc, rr, weights, tokens = random_batch(0, num_refs=1)
    counts = (tokens[0], tokens[1])
    options = options_for(loss_type)
    dpo = get_objective("dpo", loss_type=loss_type, **options)(pc, pr, rc, rr, token_counts=counts)
    for weighting in ("uniform", "arwc"):
        objective = get_objective(
            "mrpo", aggregation=aggregation, loss_type=loss_type, weighting=weighting, **options
        )
        for w in (None, weights):
            out = objective(pc, pr, rc, rr, w, token_counts=counts)
            assert torch.equal(out.losses, dpo.losses)
            assert torch.equal(out.chosen_rewards, dpo.chosen_rewards)
            assert torch.equal(out.rejected_rewards, dpo.rejected_rewards)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_down", "robust", "sigmoid_norm"])
@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
@pytest.mark.parametrize("seed", range(2))
def test_identical_references_equal_dpo(aggregation: str, loss_type: str, seed: int) -> None:
    pc, pr, rc, rr, _, tokens = random_batch(seed, num_refs=1)
    counts = (tokens[0], tokens[1])
    dpo = get_objective("dpo", loss_type=loss_type)(pc, pr, rc, rr, token_counts=counts)
    same_c, same_r = rc.expand(3, -1), rr.expand(3, -1)
    objective = get_objective("mrpo", aggregation=aggregation, loss_type=loss_type)
    for w in (None, torch.rand(5, 3, dtype=F64) + 0.1):
        out = objective(pc, pr, same_c, same_r, w, token_counts=counts)
        torch.testing.assert_close(out.losses, dpo.losses, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(out.chosen_rewards, dpo.chosen_rewards, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_harmonic_below_geometric_below_arithmetic(seed: int) -> None:
    _, _, rc, _, weights, _ = random_batch(seed, num_refs=4, batch=50)
    weights = weights / weights.sum(dim=1, keepdim=True)
    weights[0] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)  # a zero weight is allowed
    h, g, a = (
        f(rc, weights) for f in (harmonic_reference, geometric_reference, arithmetic_reference)
    )
    assert bool((h <= g + 1e-12).all()) and bool((g <= a + 1e-12).all())
    assert bool((h[1:] < g[1:]).all()) and bool((g[1:] < a[1:]).all())  # distinct references


@pytest.mark.parametrize("weighting", available_weightings())
@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_every_aggregation_runs_with_every_weighting(aggregation: str, weighting: str) -> None:
    options = {"fixed_weights": [1.0, 2.0, 3.0]} if weighting == "fixed" else {}
    objective = get_objective(
        "mrpo", aggregation=aggregation, weighting=weighting, num_refs=3, **options
    )
    pc, pr, rc, rr, _, tokens = random_batch(1, num_refs=3)
    if objective.weighting.fits_on_validation:
        objective.weighting.fit(rc, rr, tokens[0].expand(3, -1), tokens[1].expand(3, -1))
    if objective.weighting.needs_feedback:
        objective.weighting.select()
    pc.requires_grad_(True)
    out = objective(pc, pr, rc, rr)
    out.loss.backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all()
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(5, dtype=F64))


def test_aot_with_loss_mixture_uses_batch_mean_weights() -> None:
    pc, pr, rc, rr, weights, _ = random_batch(2, num_refs=2)
    objective = get_objective("multi_dpo", loss_type="aot", label_smoothing=0.0)
    out = objective(pc, pr, rc, rr, weights)
    normalized = weights / weights.sum(dim=1, keepdim=True)
    mean = normalized.mean(dim=0)
    per_ref = [
        get_objective("dpo", loss_type="aot")(pc, pr, rc[k : k + 1], rr[k : k + 1]) for k in (0, 1)
    ]
    expected = mean[0] * per_ref[0].losses.mean() + mean[1] * per_ref[1].losses.mean()
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)


def test_official_pairing_needs_the_harmonic_aggregation() -> None:
    with pytest.raises(OptionError, match="needs aggregation='harmonic'") as err:
        get_objective("mrpo", harmonic_pairing="official", aggregation="geometric")
    assert err.value.option == "harmonic_pairing"


def test_unknown_aggregation_is_refused_by_name() -> None:
    with pytest.raises(OptionError, match="unknown option 'aggregation'='median'") as err:
        get_objective("mrpo", aggregation="median")
    assert err.value.option == "aggregation"
    with pytest.raises(OptionError, match=r"does not accept option\(s\) \['aggregation'\]"):
        get_objective("dpo", aggregation="geometric")
