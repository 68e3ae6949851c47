"""Values, identities and gradients of the DPO, multi-DPO and MRPO objectives."""

from __future__ import annotations

import math

import pytest
import torch

from mrpo.objectives import get_objective

F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def refs(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


# -- hand-worked values -------------------------------------------------------------------------
# One pair: ℓθ(y_w) = -10, ℓθ(y_l) = -12, ℓ_ref(y_w) = ℓ_ref(y_l) = -11, β = 0.1.
# z = (-10 + 12) - 0 = 2, h = βz = 0.2.
DPO_CASES = [
    # sigmoid: -log σ(0.2) = log(1 + e^-0.2)
    ({"loss_type": "sigmoid"}, 0.5981388693815918),
    # cDPO: 0.9·log(1 + e^-0.2) + 0.1·log(1 + e^0.2) = 0.9·0.598139 + 0.1·0.798139
    ({"loss_type": "sigmoid", "label_smoothing": 0.1}, 0.6181388693815918),
    # IPO: (z - 1/(2β))² = (2 - 5)²
    ({"loss_type": "ipo"}, 9.0),
    # hinge: max(0, 1 - 0.2)
    ({"loss_type": "hinge"}, 0.8),
]


@pytest.mark.parametrize(("options", "expected"), DPO_CASES)
@pytest.mark.parametrize("name", ["dpo", "multi_dpo", "mrpo"])
def test_single_reference_hand_values(name: str, options: dict, expected: float) -> None:
    objective = get_objective(name, beta=0.1, **options)
    out = objective(t(-10.0), t(-12.0), refs((-11.0,)), refs((-11.0,)))
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    # rewards β(ℓθ - ℓ_ref): 0.1·(-10 + 11), 0.1·(-12 + 11)
    assert out.chosen_rewards.item() == pytest.approx(0.1, abs=1e-12)
    assert out.rejected_rewards.item() == pytest.approx(-0.1, abs=1e-12)
    assert out.weights.tolist() == [[1.0]]
    assert out.clip_fraction.item() == 0.0


def test_multi_dpo_hand_value() -> None:
    # β = 0.5, α = (0.25, 0.75). Reference 1: margin 0, z1 = 2, h1 = 1.
    # Reference 2: margin -10 + 14 = 4, z2 = 2 - 4 = -2, h2 = -1.
    # L = 0.25·log(1 + e^-1) + 0.75·log(1 + e^1) = 0.25·0.313262 + 0.75·1.313262 = 1.063262
    objective = get_objective("multi_dpo", beta=0.5, ctro=False)
    out = objective(
        t(-10.0), t(-12.0), refs((-11.0,), (-10.0,)), refs((-11.0,), (-14.0,)), t(0.25, 0.75)
    )
    assert out.losses.item() == pytest.approx(1.0632616875182228, abs=1e-12)
    # Rewards against the weighted mean reference: ℓ̄(y_w) = -10.25, ℓ̄(y_l) = -13.25.
    assert out.chosen_rewards.item() == pytest.approx(0.5 * (-10.0 + 10.25), abs=1e-12)
    assert out.rejected_rewards.item() == pytest.approx(0.5 * (-12.0 + 13.25), abs=1e-12)


def test_mrpo_hand_value_virtual_reference() -> None:
    # π_1(y_w) = 1/4, π_2(y_w) = 1/12, α = (1/2, 1/2): 1/π̂ = 2 + 6 = 8, log π̂(y_w) = -log 8.
    # π_1(y_l) = π_2(y_l) = 1/8: log π̂(y_l) = -log 8. Virtual margin 0, z = 2, h = 1 (β = 0.5).
    objective = get_objective("mrpo", beta=0.5, ctro=False)
    chosen = refs((math.log(1 / 4),), (math.log(1 / 12),))
    rejected = refs((math.log(1 / 8),), (math.log(1 / 8),))
    out = objective(t(-10.0), t(-12.0), chosen, rejected, t(0.5, 0.5))
    assert out.losses.item() == pytest.approx(0.31326168751822286, abs=1e-12)
    # β(ℓθ - log π̂): 0.5·(-10 + log 8), 0.5·(-12 + log 8)
    assert out.chosen_rewards.item() == pytest.approx(-3.960279229160082, abs=1e-12)
    assert out.rejected_rewards.item() == pytest.approx(-4.960279229160082, abs=1e-12)


def test_mrpo_official_pairing_hand_values() -> None:
    # Same references, α = (0.25, 0.75), β = 0.5.
    # general:  1/π̂(y_w) = 0.25·4 + 0.75·12 = 10, z = 2 - (-log 10 + log 8) = 2.223144
    # official: 1/π̂(y_w) = 0.75·4 + 0.25·12 = 6,  z = 2 - (-log 6 + log 8) = 1.712318
    chosen = refs((math.log(1 / 4),), (math.log(1 / 12),))
    rejected = refs((math.log(1 / 8),), (math.log(1 / 8),))
    weights = t(0.25, 0.75)
    general = get_objective("mrpo", beta=0.5, ctro=False)
    official = get_objective("mrpo", beta=0.5, ctro=False, harmonic_pairing="official")
    out_general = general(t(-10.0), t(-12.0), chosen, rejected, weights)
    out_official = official(t(-10.0), t(-12.0), chosen, rejected, weights)
    assert out_general.losses.item() == pytest.approx(0.2844579118225658, abs=1e-12)
    assert out_official.losses.item() == pytest.approx(0.35402484767905357, abs=1e-12)
    # The official pairing reports the coefficients it applied to 1/π_k.
    assert out_official.weights.tolist() == [[0.75, 0.25]]
    assert out_general.weights.tolist() == [[0.25, 0.75]]


def test_ctro_changes_mrpo_loss_by_hand() -> None:
    # Reference 2 far outside the band: ℓ_2(y_w) = -20 vs ℓ_1(y_w) = -10 (fixed ε = 0.1 -> -11),
    # ℓ_2(y_l) = -10 vs ℓ_1(y_l) = -30 (-> -27). α = (0, 1): the virtual reference is ref 2.
    # z = (-10 + 12) - (-11 + 27) = -14, h = -1.4, loss = log(1 + e^1.4).
    objective = get_objective("mrpo", beta=0.1, epsilon=0.1, adaptive_epsilon=False)
    out = objective(
        t(-10.0), t(-12.0), refs((-10.0,), (-20.0,)), refs((-30.0,), (-10.0,)), t(0.0, 1.0)
    )
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(1.4)), abs=1e-12)
    assert out.clip_fraction.item() == 1.0


# -- the authors' K = 2 computation, re-derived independently ------------------------------------
def authors_k2(pc, pr, self_c, self_r, ext_c, ext_r, beta, eta, naive):
    """Scalar re-derivation of the authors' K=2 MRPO / multi-DPO step (reference 1 = self)."""
    ls = lambda x: -math.log1p(math.exp(-x))  # noqa: E731  log σ(x)
    a_ext, a_self = ext_c - ext_r, self_c - self_r
    alpha = abs(a_ext) / (abs(a_ext) + abs(a_self) + 1e-6)
    b1, b2 = (ext_c + self_c) / 2, (ext_r + self_r) / 2
    scale = abs(b1) / (abs(b1) + abs(b2))
    eta1, eta2 = eta * scale, eta * (1 - scale)
    ext_c = min(max(ext_c, self_c * (1 + eta1)), self_c * (1 - eta1))
    ext_r = min(max(ext_r, self_r * (1 + eta2)), self_r * (1 - eta2))
    if naive:
        dpo = lambda rc, rr: -ls(beta * ((pc - pr) - (rc - rr)))  # noqa: E731
        return (1 - alpha) * dpo(self_c, self_r) + alpha * dpo(ext_c, ext_r)
    virt_c = ext_c + self_c - math.log(alpha * math.exp(ext_c) + (1 - alpha) * math.exp(self_c))
    virt_r = ext_r + self_r - math.log(alpha * math.exp(ext_r) + (1 - alpha) * math.exp(self_r))
    return -ls(beta * ((pc - pr) - (virt_c - virt_r)))


@pytest.mark.parametrize("seed", range(5))
def test_official_pairing_and_multi_dpo_reproduce_authors_code(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = (-6.0 * torch.rand(6, 4, generator=gen, dtype=F64) - 0.5).tolist()
    pc, pr, sc, sr, ec, er = values
    mrpo = get_objective("mrpo", beta=0.3, harmonic_pairing="official", epsilon=0.1)
    multi = get_objective("multi_dpo", beta=0.3, ctro=True, epsilon=0.1)
    args = (t(*pc), t(*pr), refs(sc, ec), refs(sr, er))
    got_mrpo, got_multi = mrpo(*args).losses, multi(*args).losses
    for i in range(4):
        row = (pc[i], pr[i], sc[i], sr[i], ec[i], er[i], 0.3, 0.1)
        assert got_mrpo[i].item() == pytest.approx(authors_k2(*row, naive=False), abs=1e-10)
        assert got_multi[i].item() == pytest.approx(authors_k2(*row, naive=True), abs=1e-10)


# -- identities ---------------------------------------------------------------------------------
def random_batch(seed: int, num_refs: int, batch: int = 6, scale: float = 50.0):
    gen = torch.Generator().manual_seed(seed)
    policy = -scale * torch.rand(2, batch, generator=gen, dtype=F64)
    reference = -scale * torch.rand(2, num_refs, batch, generator=gen, dtype=F64)
    weights = torch.rand(batch, num_refs, generator=gen, dtype=F64) + 0.05
    return policy[0].clone(), policy[1].clone(), reference[0], reference[1], weights


@pytest.mark.parametrize("options", [{}, {"loss_type": "ipo"}, {"loss_type": "hinge"}])
@pytest.mark.parametrize("seed", range(3))
def test_one_reference_mrpo_equals_multi_dpo_equals_dpo(options: dict, seed: int) -> None:
    pc, pr, rc, rr, weights = random_batch(seed, num_refs=1)
    dpo = get_objective("dpo", **options)(pc, pr, rc, rr).losses
    for name in ("mrpo", "multi_dpo"):
        for w in (None, weights, 3.7 * weights):
            for ctro in (True, False):
                got = get_objective(name, ctro=ctro, **options)(pc, pr, rc, rr, w).losses
                torch.testing.assert_close(got, dpo, atol=1e-6, rtol=0)


@pytest.mark.parametrize("weighting", ["arwc", "uniform", "sliding_window"])
@pytest.mark.parametrize("seed", range(3))
def test_identical_references_mrpo_equals_dpo(weighting: str, seed: int) -> None:
    pc, pr, rc, rr, weights = random_batch(seed, num_refs=1)
    dpo = get_objective("dpo")(pc, pr, rc, rr)
    same_c, same_r = rc.expand(4, -1), rr.expand(4, -1)
    mrpo = get_objective("mrpo", weighting=weighting)
    for w in (None, weights.expand(-1, 4)):
        out = mrpo(pc, pr, same_c, same_r, w)
        torch.testing.assert_close(out.losses, dpo.losses, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.chosen_rewards, dpo.chosen_rewards, atol=1e-6, rtol=0)
        assert out.clip_fraction.item() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_official_and_general_pairing_agree_at_one_half_and_differ_otherwise(seed: int) -> None:
    pc, pr, rc, rr, weights = random_batch(seed, num_refs=2, scale=5.0)
    general = get_objective("mrpo", ctro=False)
    official = get_objective("mrpo", ctro=False, harmonic_pairing="official")
    half = torch.full_like(weights, 0.5)
    torch.testing.assert_close(
        official(pc, pr, rc, rr, half).losses, general(pc, pr, rc, rr, half).losses
    )
    skew = torch.tensor([0.2, 0.8], dtype=F64)
    assert not torch.allclose(
        official(pc, pr, rc, rr, skew).losses, general(pc, pr, rc, rr, skew).losses
    )
    # As the formulas say: official with (α_1, α_2) is general with (α_2, α_1).
    torch.testing.assert_close(
        official(pc, pr, rc, rr, skew).losses, general(pc, pr, rc, rr, skew.flip(0)).losses
    )


def test_dpo_uses_reference_zero_only() -> None:
    pc, pr, rc, rr, _ = random_batch(0, num_refs=3)
    full = get_objective("dpo")(pc, pr, rc, rr)
    first = get_objective("dpo")(pc, pr, rc[:1], rr[:1])
    torch.testing.assert_close(full.losses, first.losses)
    assert full.weights[:, 0].eq(1).all() and full.weights[:, 1:].eq(0).all()


# -- gradients ----------------------------------------------------------------------------------
GRAD_CONFIGS = [
    ("dpo", {}),
    ("dpo", {"loss_type": "ipo"}),
    ("dpo", {"loss_type": "hinge"}),
    ("dpo", {"label_smoothing": 0.2}),
    ("multi_dpo", {"ctro": True}),
    ("multi_dpo", {"loss_type": "hinge", "weighting": "uniform"}),
    ("mrpo", {}),
    ("mrpo", {"loss_type": "ipo", "weighting": "fixed", "fixed_weights": [1, 0, 2]}),
    ("mrpo", {"label_smoothing": 0.1, "adaptive_epsilon": False}),
]


@pytest.mark.parametrize(("name", "options"), GRAD_CONFIGS)
def test_gradcheck_wrt_policy(name: str, options: dict) -> None:
    pc, pr, rc, rr, _ = random_batch(1, num_refs=3, batch=4, scale=3.0)
    objective = get_objective(name, beta=0.1, **options)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    # Hinge has a kink at h = 1; these log-probs keep |h| far below it.
    assert torch.autograd.gradcheck(lambda a, b: objective(a, b, rc, rr).losses, (pc, pr))


@pytest.mark.parametrize("name", ["dpo", "multi_dpo", "mrpo"])
def test_rewards_detached_and_gradients_reach_only_the_policy(name: str) -> None:
    pc, pr, rc, rr, _ = random_batch(2, num_refs=3)
    leaves = [x.clone().requires_grad_(True) for x in (pc, pr, rc, rr)]
    objective = get_objective(name)
    out = objective(*leaves)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert not out.weights.requires_grad and not out.clip_fraction.requires_grad
    out.losses.sum().backward()
    assert leaves[0].grad is not None and leaves[1].grad is not None
    assert leaves[0].grad.abs().sum() > 0
    assert leaves[2].grad is None and leaves[3].grad is None  # references are detached


def test_explicit_weights_get_no_gradient() -> None:
    pc, pr, rc, rr, weights = random_batch(3, num_refs=2)
    weights.requires_grad_(True)
    pc.requires_grad_(True)
    get_objective("mrpo")(pc, pr, rc, rr, weights).losses.sum().backward()
    assert weights.grad is None and pc.grad is not None


# -- dtypes -------------------------------------------------------------------------------------
def test_half_inputs_are_upcast_to_float32_and_float64_is_kept() -> None:
    pc, pr, rc, rr, _ = random_batch(4, num_refs=2)
    half = get_objective("mrpo")(pc.half(), pr.half(), rc.bfloat16(), rr.half())
    assert half.losses.dtype == torch.float32 and half.weights.dtype == torch.float32
    reference = get_objective("mrpo")(
        pc.half().float(), pr.half().float(), rc.bfloat16().float(), rr.half().float()
    )
    torch.testing.assert_close(half.losses, reference.losses)
    assert get_objective("mrpo")(pc, pr, rc.float(), rr.float()).losses.dtype == F64


def test_output_helpers() -> None:
    out = get_objective("dpo", beta=0.1)(
        t(-10.0, -5.0), t(-12.0, -4.0), refs((-11.0, -5.0)), refs((-11.0, -5.0))
    )
    assert out.loss.item() == pytest.approx(out.losses.mean().item())
    # pair 1: margin reward 0.2 > 0; pair 2: 0.1·(-5 + 5) - 0.1·(-4 + 5) = -0.1 < 0
    assert out.reward_margins.tolist() == pytest.approx([0.2, -0.1])
    assert out.reward_accuracy.item() == 0.5
