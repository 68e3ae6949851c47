"""Loss types beyond TRL's parity test: SimPO by hand, the loss-type registry's contract,
and loss types across K references."""

from __future__ import annotations

import math

import pytest
import torch

from mrpo.errors import OptionError
from mrpo.objectives import AGGREGATIONS, LOSS_TYPES, get_objective

F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_simpo_by_hand_ignores_the_references() -> None:
    # ℓθ(y_w) = -6 over 3 tokens, ℓθ(y_l) = -12 over 4 tokens: margin -2 - (-3) = 1.
    # β = 2, γ = 0.5: h = 2·1 - 0.5 = 1.5, loss = log(1 + e^-1.5).
    expected = math.log1p(math.exp(-1.5))
    counts = (torch.tensor([3]), torch.tensor([4]))
    objective = get_objective("dpo", beta=2.0, loss_type="simpo", simpo_gamma=0.5)
    for ref_chosen, ref_rejected in ((t(-1.0), t(-50.0)), (t(-40.0), t(-2.0))):
        out = objective(
            t(-6.0), t(-12.0), ref_chosen[None], ref_rejected[None], token_counts=counts
        )
        assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    # With smoothing ε = 0.1: 0.9·log(1 + e^-1.5) + 0.1·log(1 + e^1.5).
    smoothed = get_objective("mrpo", beta=2.0, loss_type="simpo", simpo_gamma=0.5,
                             label_smoothing=0.1, aggregation="geometric")  # fmt: skip
    out = smoothed(t(-6.0), t(-12.0), t(-1.0, -2.0)[:, None], t(-3.0, -9.0)[:, None],
                   token_counts=counts)  # fmt: skip
    assert out.losses.item() == pytest.approx(
        0.9 * expected + 0.1 * math.log1p(math.exp(1.5)), abs=1e-12
    )


def test_sft_is_the_chosen_token_nll_for_every_pair() -> None:
    # Chosen responses: -6 over 3 tokens and -2 over 1 token: NLL (6 + 2) / 4 = 2 per token.
    counts = (torch.tensor([3, 1]), torch.tensor([5, 5]))
    out = get_objective("dpo", loss_type="sft")(
        t(-6.0, -2.0), t(-9.0, -9.0), t(-1.0, -1.0)[None], t(-1.0, -1.0)[None], token_counts=counts
    )
    assert out.losses.tolist() == [2.0, 2.0]


def test_loss_weights_add_weighted_terms() -> None:
    pc, pr, rc, rr = t(-10.0, -3.0), t(-12.0, -4.0), t(-11.0, -2.0)[None], t(-11.0, -5.0)[None]
    counts = (torch.tensor([4, 2]), torch.tensor([5, 3]))
    parts = {
        name: get_objective("dpo", loss_type=name)(pc, pr, rc, rr, token_counts=counts).losses
        for name in ("sigmoid", "apo_zero", "sft")
    }
    both = get_objective(
        "dpo", loss_type=["sigmoid", "apo_zero", "sft"], loss_weights=[0.5, 2.0, 0.0]
    )(pc, pr, rc, rr, token_counts=counts)
    torch.testing.assert_close(both.losses, 0.5 * parts["sigmoid"] + 2.0 * parts["apo_zero"])


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_every_loss_type_runs_across_k_references(loss_type: str) -> None:
    gen = torch.Generator().manual_seed(3)
    pc, pr = (-20 * torch.rand(6, generator=gen, dtype=F64) for _ in range(2))
    rc, rr = (-20 * torch.rand(3, 6, generator=gen, dtype=F64) for _ in range(2))
    counts = (torch.randint(1, 9, (6,), generator=gen), torch.randint(1, 9, (6,), generator=gen))
    smoothing = 0.01 if loss_type == "exo_pair" else 0.0
    for aggregation in AGGREGATIONS:
        pc.requires_grad_(True)
        objective = get_objective(
            "mrpo", loss_type=loss_type, aggregation=aggregation, label_smoothing=smoothing
        )
        out = objective(pc, pr, rc, rr, token_counts=counts)
        (grad,) = torch.autograd.grad(out.loss, pc)
        assert out.losses.shape == (6,) and torch.isfinite(out.losses).all()
        assert torch.isfinite(grad).all()


def test_token_counts_are_required_where_a_loss_type_reads_them() -> None:
    objective = get_objective("dpo", loss_type="sigmoid_norm")
    with pytest.raises(ValueError, match="needs token_counts"):
        objective(t(-1.0), t(-2.0), t(-1.0)[None], t(-1.0)[None])


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"loss_type": ["sigmoid", "sigmoid"]}, "loss_type"),
        ({"loss_type": []}, "loss_type"),
        ({"loss_type": 3}, "loss_type"),
        ({"loss_type": ["sigmoid", "ipo"], "loss_weights": [1.0, -1.0]}, "loss_weights"),
        ({"loss_type": ["sigmoid", "ipo"], "loss_weights": [0.0, 0.0]}, "loss_weights"),
        ({"loss_type": "robust", "label_smoothing": 0.5}, "label_smoothing"),
        ({"f_divergence_type": "hellinger"}, "f_divergence_type"),
        ({"loss_type": "aot", "f_divergence_type": "forward_kl"}, "f_divergence_type"),
        ({"discopop_tau": 0.0}, "discopop_tau"),
        ({"simpo_gamma": -1.0}, "simpo_gamma"),
        ({"loss_type": "simpo", "length_normalize": True}, "length_normalize"),
        ({"length_normalize": "yes"}, "length_normalize"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict, option: str) -> None:
    with pytest.raises(OptionError) as err:
        get_objective("mrpo", **options)
    assert err.value.option == option
