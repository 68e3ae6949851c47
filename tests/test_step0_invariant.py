"""The step-0 invariant: with the policy equal to every reference, the sigmoid loss is ln 2.

At step 0 the policy is the initial weights and every reference here is those weights too
(``source: self``), so every implicit reward is 0 and −log σ(0) = ln 2 for every pair, in every
layout (padded, prompt shared, packed), objective, aggregation, weighting and K. A layout bug
that scores the policy on other tokens than the references (a packing bug of another
framework started near 6 × ln 2) breaks it. The runs go through the real data, cache and
module path with a tiny model; the objective's inputs are recorded on the way and every
objective is evaluated on them.
"""

from __future__ import annotations

import math

import pytest
import torch

from mrpo.cli.train import train
from mrpo.objectives import AGGREGATIONS, Objective, get_objective

LN2 = math.log(2.0)
LAYOUTS = {
    "padded": ["data.prefix_sharing=false"],
    "prefix_shared": ["data.prefix_sharing=true"],
    "packed": ["data.prefix_sharing=false", "data.packing=true"],
    # live references score each batch through the same layout as the policy
    "packed_live": ["data.packing=true", "references.mode=live"],
}


def self_pool(num_refs: int) -> str:
    entries = ",".join(f"{{name:ref{i},source:self}}" for i in range(num_refs))
    return f"references.pool=[{entries}]"


def record_step0_inputs(compose_train, monkeypatch, tmp_path, overrides: list[str]):
    """Train one step; return the run's summary and the objective inputs and losses of every
    call made with the initial weights (validation before training and the first step)."""
    calls: list[tuple] = []
    original = Objective.__call__

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        first_step_done = any(grad for *_, grad in calls)
        if not first_step_done:
            calls.append((args, kwargs, out.losses.detach(), torch.is_grad_enabled()))
        return out

    monkeypatch.setattr(Objective, "__call__", spy)
    summary = train(
        compose_train(
            [*overrides, "references=self", "trainer.max_steps=1", "save_model=false"],
            output_dir=tmp_path / "run",
        )
    )
    monkeypatch.setattr(Objective, "__call__", original)
    assert calls and calls[-1][-1], "the first training step was recorded"
    return summary, calls


def every_objective(num_refs: int):
    yield get_objective("dpo")
    for aggregation in AGGREGATIONS:
        for weighting in ("uniform", "arwc"):
            yield get_objective(
                "mrpo", aggregation=aggregation, weighting=weighting, num_refs=num_refs
            )
    yield get_objective("multi_dpo", weighting="sliding_window", num_refs=num_refs)
    # Length-normalized DPO reads the run's token counts; with every reward 0 it is ln 2 too.
    yield get_objective("mrpo", loss_type="sigmoid_norm", aggregation="geometric")
    yield get_objective("dpo", loss_type=["sigmoid", "sigmoid_norm"], loss_weights=[0.5, 0.5])


@pytest.mark.parametrize("num_refs", [1, 3])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_step0_sigmoid_loss_is_ln2(compose_train, monkeypatch, tmp_path, layout, num_refs):
    overrides = [*LAYOUTS[layout], self_pool(num_refs), "loss=mrpo", "weights=arwc"]
    summary, calls = record_step0_inputs(compose_train, monkeypatch, tmp_path, overrides)
    assert summary["before/val/loss"] == pytest.approx(LN2, abs=1e-4)
    for args, kwargs, losses, _ in calls:  # the run's own objective, pair by pair
        assert args[2].shape[0] == num_refs
        assert bool((args[0] < -1.0).all())  # real log-probs, not an empty response
        torch.testing.assert_close(losses, torch.full_like(losses, LN2), atol=1e-4, rtol=0)
        for objective in every_objective(num_refs):
            out = objective(*args, **kwargs)
            expected = torch.full_like(out.losses, LN2)
            torch.testing.assert_close(out.losses, expected, atol=1e-4, rtol=0)
