"""CTRO clipping and the harmonic virtual reference: hand values and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mrpo.objectives import (
    adaptive_epsilons,
    apply_ctro,
    ctro_clip,
    geometric_reference,
    harmonic_reference,
    pair_weights,
)

F64 = torch.float64


def test_ctro_adaptive_hand_values() -> None:
    # ℓ(y_w) = (-10, -20), ℓ(y_l) = (-30, -10), ε = 0.1.
    # b_w = -15, b_l = -20, s = 15/35 = 3/7: ε_w = 0.3/7, ε_l = 0.4/7.
    # y_w band [-10(1 + 0.3/7), -10(1 - 0.3/7)] = [-10.428571, -9.571429]: -20 -> -10 - 3/7
    # y_l band [-30(1 + 0.4/7), -30(1 - 0.4/7)] = [-31.714286, -28.285714]: -10 -> -30 + 12/7
    chosen = torch.tensor([[-10.0], [-20.0]], dtype=F64)
    rejected = torch.tensor([[-30.0], [-10.0]], dtype=F64)
    eps_w, eps_l = adaptive_epsilons(chosen, rejected, 0.1)
    assert eps_w.item() == pytest.approx(0.3 / 7, abs=1e-15)
    assert eps_l.item() == pytest.approx(0.4 / 7, abs=1e-15)
    clipped_c, clipped_r, fraction = apply_ctro(chosen, rejected, 0.1)
    assert clipped_c.flatten().tolist() == pytest.approx([-10.0, -10.0 - 3 / 7], abs=1e-12)
    assert clipped_r.flatten().tolist() == pytest.approx([-30.0, -30.0 + 12 / 7], abs=1e-12)
    assert fraction.item() == 1.0


def test_ctro_fixed_hand_values_and_clip_fraction() -> None:
    # Fixed ε = 0.1: y_w band [-11, -9], y_l band [-33, -27]. Pair 2 is inside both bands.
    chosen = torch.tensor([[-10.0, -10.0], [-20.0, -10.5]], dtype=F64)
    rejected = torch.tensor([[-30.0, -30.0], [-10.0, -31.0]], dtype=F64)
    clipped_c, clipped_r, fraction = apply_ctro(chosen, rejected, 0.1, adaptive=False)
    assert clipped_c.tolist() == [[-10.0, -10.0], [-11.0, -10.5]]
    assert clipped_r.tolist() == [[-30.0, -30.0], [-27.0, -31.0]]
    assert fraction.item() == 0.5  # 2 of the 4 entries of reference 2 were moved


def test_ctro_band_is_ordered_for_positive_and_zero_primary() -> None:
    # ℓ_1 = 2 > 0: band [1.8, 2.2] (not the empty [2.2, 1.8]); ℓ_1 = 0: band {0}.
    logps = torch.tensor([[2.0, 0.0], [5.0, -3.0]], dtype=F64)
    clipped, moved = ctro_clip(logps, 0.1)
    assert clipped[1].tolist() == pytest.approx([2.2, 0.0])
    assert moved.tolist() == [[True, True]]


def test_adaptive_epsilon_zero_over_zero_splits_evenly() -> None:
    zeros = torch.zeros(3, 2, dtype=F64)
    eps_w, eps_l = adaptive_epsilons(zeros, zeros, 0.2)
    assert eps_w.tolist() == [0.1, 0.1] and eps_l.tolist() == [0.1, 0.1]


def test_single_reference_has_nothing_to_clip() -> None:
    clipped_c, _, fraction = apply_ctro(torch.tensor([[-3.0]]), torch.tensor([[-4.0]]), 0.1)
    assert clipped_c.item() == -3.0 and fraction.item() == 0.0


def test_harmonic_reference_hand_value_and_zero_weights() -> None:
    # π = (1/4, 1/12), α = (1/4, 3/4): 1/π̂ = 1 + 9 = 10 -> log π̂ = -log 10.
    logps = torch.tensor([[math.log(1 / 4)], [math.log(1 / 12)]], dtype=F64)
    weights = torch.tensor([[0.25, 0.75]], dtype=F64)
    assert harmonic_reference(logps, weights).item() == pytest.approx(-math.log(10), abs=1e-12)
    # A zero weight drops the reference: α = (0, 1) gives exactly ℓ_2, finite.
    one_hot = torch.tensor([[0.0, 1.0]], dtype=F64)
    assert harmonic_reference(logps, one_hot).item() == pytest.approx(math.log(1 / 12))


def test_official_pairing_needs_two_references() -> None:
    with pytest.raises(ValueError, match="'harmonic_pairing'='official' needs exactly K=2"):
        pair_weights(torch.full((2, 3), 1 / 3), "official")
    with pytest.raises(ValueError, match="unknown option 'harmonic_pairing'='x'"):
        pair_weights(torch.full((2, 2), 0.5), "x")


# -- properties ---------------------------------------------------------------------------------
logp = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False)


@st.composite
def references_and_weights(draw, max_refs: int = 5, max_batch: int = 4):
    k = draw(st.integers(1, max_refs))
    b = draw(st.integers(1, max_batch))
    values = draw(st.lists(logp, min_size=k * b, max_size=k * b))
    raw = draw(st.lists(st.floats(0.0, 1.0), min_size=k * b, max_size=k * b))
    weights = torch.tensor(raw, dtype=F64).reshape(b, k)
    weights[:, draw(st.integers(0, k - 1))] += 1e-3  # at least one positive weight per row
    weights = weights / weights.sum(dim=1, keepdim=True)
    return torch.tensor(values, dtype=F64).reshape(k, b), weights


@settings(max_examples=150, deadline=None)
@given(references_and_weights())
def test_jensen_harmonic_reference_below_weighted_geometric_mean(case) -> None:
    logps, weights = case
    harmonic = harmonic_reference(logps, weights)
    geometric = geometric_reference(logps, weights)
    assert torch.isfinite(harmonic).all()
    assert (harmonic <= geometric + 1e-9 * (1 + geometric.abs())).all()
    # And π̂ lies between the smallest and largest reference (a mean of the references).
    used = weights.transpose(0, 1) > 0
    low = torch.where(used, logps, torch.inf).amin(dim=0)
    assert (harmonic >= low - 1e-9 * (1 + low.abs())).all()


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.data(),
    st.floats(0.0, 1.0),
    st.booleans(),
)
def test_ctro_output_inside_band_and_unchanged_inside(k, b, data, epsilon, adaptive) -> None:
    # Primary log-probs may also be positive (mean-normalized inputs): the band must stay valid.
    wide = st.floats(min_value=-1e4, max_value=10.0, allow_nan=False)
    chosen = torch.tensor(data.draw(st.lists(wide, min_size=k * b, max_size=k * b)), dtype=F64)
    rejected = torch.tensor(data.draw(st.lists(wide, min_size=k * b, max_size=k * b)), dtype=F64)
    chosen, rejected = chosen.reshape(k, b), rejected.reshape(k, b)
    clipped_c, clipped_r, fraction = apply_ctro(chosen, rejected, epsilon, adaptive)
    eps_w, eps_l = adaptive_epsilons(chosen, rejected, epsilon, adaptive)
    for original, clipped, eps in ((chosen, clipped_c, eps_w), (rejected, clipped_r, eps_l)):
        assert torch.equal(clipped[0], original[0])  # the primary is never clipped
        ends = torch.stack([(1 + eps) * original[0], (1 - eps) * original[0]])
        low, high = ends.amin(dim=0), ends.amax(dim=0)
        tol = 1e-12 * (1 + original[0].abs())
        assert ((clipped[1:] >= low - tol) & (clipped[1:] <= high + tol)).all()
        inside = (original[1:] >= low) & (original[1:] <= high)
        assert torch.equal(clipped[1:][inside], original[1:][inside])
    assert 0.0 <= fraction.item() <= 1.0
