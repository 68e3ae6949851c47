"""Weightings that need the training loop: Thompson sampling and offline (vdw, vaw) fits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from mrpo.cli.steps import build_ensemble, prepare_data
from mrpo.cli.train import train
from mrpo.compare.records import read_metrics
from mrpo.config import TrainConfig, to_dataclass
from mrpo.objectives import vaw_weights, vdw_weights

PRIOR = (5.0, 5.0)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_thompson_run_selects_and_rewards_arms(compose_train, accumulate: int) -> None:
    cfg = compose_train(
        [
            "references=prompted",
            "references.num_refs=3",
            "weights=thompson",
            f"weights.prior=[{PRIOR[0]},{PRIOR[1]}]",
            "weights.feedback_size=4",
            f"trainer.accumulate_grad_batches={accumulate}",
        ]
    )
    summary = train(cfg)
    assert summary["global_step"] == 2
    # One draw and one reward per optimizer step, whatever the accumulation; every micro-batch
    # of a step took a single-reference step against its arm: the logged weights are one-hot.
    metrics = read_metrics(summary["run_dir"])
    arms = metrics["train/bandit/arm"]
    assert len(arms) == 2 and all(a in (0.0, 1.0, 2.0) for a in arms.values())
    for step, arm in arms.items():
        assert metrics[f"train/ref_weight/{int(arm)}"][step] == pytest.approx(1.0)
    # Each step rewarded the arm it drew: that arm's Beta counts grew by one, the others' not.
    last = torch.load(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    state = last["mrpo_objective_state"]["weighting"]
    pulls = Counter(int(a) for a in arms.values())
    for k in range(3):
        assert state["alpha"][k] + state["beta"][k] == sum(PRIOR) + pulls[k]
    assert sum(state["alpha"]) - 3 * PRIOR[0] + sum(state["beta"]) - 3 * PRIOR[1] == 2


@pytest.mark.parametrize(("strategy", "formula"), [("vdw", vdw_weights), ("vaw", vaw_weights)])
def test_offline_weights_are_fitted_on_validation(compose_train, strategy: str, formula) -> None:
    cfg = compose_train(["references=prompted", "references.num_refs=2", f"weights={strategy}"])
    summary = train(cfg)
    metrics = read_metrics(summary["run_dir"])
    used = [metrics[f"train/ref_weight/{k}"] for k in range(2)]
    # The weights the formula gives on the validation split's reference log-probs (read back
    # from the cache the run filled): the run must have used exactly these, at every step.
    run_cfg = to_dataclass(cfg, TrainConfig)
    data = prepare_data(run_cfg)
    val = build_ensemble(run_cfg).precompute(data.val_examples, progress=False).logps
    index = torch.tensor([ex.index for ex in data.val_examples])
    rows = [ref.select(index) for ref in val]
    expected = formula(
        *(torch.stack([getattr(r, name) for r in rows]) for name in
          ("chosen", "rejected", "chosen_tokens", "rejected_tokens"))
    )  # fmt: skip
    for step in (0, 1):
        for k in range(2):
            assert used[k][step] == pytest.approx(float(expected[k]), abs=1e-6)
    if strategy == "vdw":  # margins of distinct references differ: not the uniform fallback
        assert abs(float(expected[0]) - 0.5) > 1e-4
