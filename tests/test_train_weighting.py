"""Weightings that need the training loop: Thompson sampling and offline (vdw, vaw) fits."""

from __future__ import annotations

import pytest

from mrpo.compare.records import read_metrics
from mrpo.cli.train import train


def test_thompson_run_selects_and_rewards_arms(compose_train) -> None:
    cfg = compose_train(
        [
            "references=prompted",
            "references.num_refs=3",
            "weights=thompson",
            "weights.feedback_size=4",
        ]
    )
    summary = train(cfg)
    assert summary["global_step"] == 2
    # The bandit took one single-reference step per batch: the logged weights are one-hot.
    metrics = read_metrics(summary["run_dir"])
    arms = metrics["train/bandit/arm"]
    assert len(arms) == 2 and all(a in (0.0, 1.0, 2.0) for a in arms.values())
    for step, arm in arms.items():
        assert metrics[f"train/ref_weight/{int(arm)}"][step] == pytest.approx(1.0)


@pytest.mark.parametrize("strategy", ["vdw", "vaw"])
def test_offline_weights_are_fitted_on_validation(compose_train, strategy: str) -> None:
    summary = train(
        compose_train(["references=prompted", "references.num_refs=2", f"weights={strategy}"])
    )
    metrics = read_metrics(summary["run_dir"])
    w0, w1 = metrics["train/ref_weight/0"][0], metrics["train/ref_weight/1"][0]
    assert w0 + w1 == pytest.approx(1.0, abs=1e-5)
    # Fixed for the whole run: every step uses the same fitted weights.
    assert metrics["train/ref_weight/0"][1] == pytest.approx(w0)
