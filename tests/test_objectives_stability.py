"""Finite losses and gradients for extreme inputs, for every objective and loss type."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mrpo.objectives import get_objective

CONFIGS = [
    ("dpo", {}),
    ("dpo", {"loss_type": "ipo"}),
    ("multi_dpo", {"ctro": True, "label_smoothing": 0.1}),
    ("multi_dpo", {"loss_type": "hinge", "weighting": "uniform"}),
    ("mrpo", {}),
    ("mrpo", {"adaptive_epsilon": False, "loss_type": "ipo"}),
    ("mrpo", {"ctro": False, "weighting": "fixed", "fixed_weights": [0, 1, 0]}),
]

logp = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False)


def check_finite(name, options, policy_c, policy_r, ref_c, ref_r, weights=None) -> None:
    policy_c = policy_c.clone().requires_grad_(True)
    policy_r = policy_r.clone().requires_grad_(True)
    out = get_objective(name, **options)(policy_c, policy_r, ref_c, ref_r, weights)
    out.losses.sum().backward()
    for tensor in (out.losses, out.chosen_rewards, out.rejected_rewards, out.weights):
        assert torch.isfinite(tensor).all(), (name, options, tensor)
    assert torch.isfinite(policy_c.grad).all() and torch.isfinite(policy_r.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "options"), CONFIGS)
def test_corner_cases_are_finite(name: str, options: dict, dtype: torch.dtype) -> None:
    big = torch.full((3, 2), -1e4, dtype=dtype)
    zeros = torch.zeros(3, 2, dtype=dtype)
    mixed = torch.tensor([[-1e4, 0.0], [0.0, -1e4], [-1e4, -1e4]], dtype=dtype)
    cases = [
        (big[0], big[0], big, big),  # all -1e4, zero margins, ARWC 0/0
        (zeros[0], zeros[0], zeros, zeros),  # all 0: CTRO band {0}, adaptive ε 0/0
        (big[0], zeros[0], mixed, mixed.flip(0)),  # margins of ±1e4
        (zeros[0], big[0], zeros, big),
    ]
    for case in cases:
        check_finite(name, options, *case)
    if name != "dpo":  # zero weights (one-hot rows)
        one_hot = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=dtype)
        check_finite(name, options, big[0], zeros[0], mixed, mixed.flip(0), one_hot)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CONFIGS), st.integers(1, 3), st.integers(1, 3), st.data())
def test_random_extreme_inputs_are_finite(config, num_refs, batch, data) -> None:
    name, options = config
    if options.get("weighting") == "fixed":
        options = {**options, "fixed_weights": [1.0] * num_refs}

    def draw(*shape: int) -> torch.Tensor:
        n = 1
        for size in shape:
            n *= size
        values = data.draw(st.lists(logp, min_size=n, max_size=n))
        return torch.tensor(values, dtype=torch.float32).reshape(shape)

    ref_c = draw(num_refs, batch)
    ref_r = ref_c.clone() if data.draw(st.booleans()) else draw(num_refs, batch)
    check_finite(name, options, draw(batch), draw(batch), ref_c, ref_r)
