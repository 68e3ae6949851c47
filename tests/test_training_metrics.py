"""The preference metrics of mrpo.training.metrics, on hand-worked values."""

from __future__ import annotations

import pytest
import torch

from mrpo.data.types import PreferenceBatch
from mrpo.training.metrics import policy_margin_accuracy, reward_metrics


def test_policy_margin_accuracy_and_reward_metrics_hand_values() -> None:
    chosen, rejected = torch.tensor([-10.0, -6.0, -9.0]), torch.tensor([-12.0, -4.0, -3.0])
    n_w, n_l = torch.tensor([5, 2, 3]), torch.tensor([4, 4, 1])
    # per-token: chosen -2, -3, -3; rejected -3, -1, -3 -> wins: yes, no, tie (no)
    assert float(policy_margin_accuracy(chosen, rejected, n_w, n_l)) == pytest.approx(1 / 3)
    rewards = reward_metrics(torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert {k: float(v) for k, v in rewards.items()} == pytest.approx(
        {
            "rewards/chosen": 0.5,
            "rewards/rejected": 1 / 3,
            "rewards/margin": 1 / 6,
            "rewards/accuracy": 1 / 3,  # the tie counts as wrong
        }
    )


def test_zero_token_responses_count_as_one_token() -> None:
    # A response cut to nothing by truncation has sum 0: its mean is 0, never 0/0.
    acc = policy_margin_accuracy(
        torch.tensor([0.0]), torch.tensor([-1.0]), torch.tensor([0]), torch.tensor([1])
    )
    assert float(acc) == 1.0


def test_response_token_counts_skip_the_unpredictable_first_position() -> None:
    labels = torch.tensor([[5, 6, -100, -100], [-100, -100, 7, 8]])
    batch = PreferenceBatch(labels, torch.ones_like(labels), labels, index=torch.tensor([0]))
    assert batch.response_token_counts().tolist() == [1, 2]
