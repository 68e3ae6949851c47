"""Preference metrics logged during training and validation (names in DESIGN §7).

Pure functions of tensors: the implicit-reward statistics of the run's own objective, the
policy's log-probs, the reference weights actually used, the CTRO clip fraction, and the
reference-free policy margin accuracy, which is comparable across DPO, multi-DPO and MRPO.
"""

from __future__ import annotations

import torch

from mrpo.data.types import PreferenceBatch
from mrpo.objectives import ObjectiveOutput


def policy_margin_accuracy(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """Reference-free accuracy: mean of 1[ℓθ(y_w)/n_w > ℓθ(y_l)/n_l].

    Args:
        policy_chosen, policy_rejected: (B,) summed response log-probs.
        chosen_tokens, rejected_tokens: (B,) response token counts (zero counts count as 1).

    Returns:
        A scalar float32 tensor in [0, 1].
    """
    mean_w = policy_chosen.float() / chosen_tokens.clamp(min=1).float()
    mean_l = policy_rejected.float() / rejected_tokens.clamp(min=1).float()
    return (mean_w > mean_l).float().mean()


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict:
    """Implicit-reward statistics as TRL's DPOTrainer logs them.

    Args:
        chosen_rewards, rejected_rewards: (B,) detached implicit rewards.

    Returns:
        ``rewards/{chosen,rejected,margin,accuracy}`` as scalar tensors (batch means).
    """
    margin = chosen_rewards - rejected_rewards
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margin": margin.mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
    }


def preference_metrics(
    out: ObjectiveOutput,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    batch: PreferenceBatch,
) -> dict[str, torch.Tensor]:
    """Every per-batch preference metric, without the ``train/``/``val/`` prefix.

    Args:
        out: an objective's output (``chosen_rewards``, ``rejected_rewards`` (B,),
            ``weights`` (B, K), ``clip_fraction`` scalar).
        policy_chosen, policy_rejected: (B,) policy log-probs used by the objective.
        batch: the batch (it gives the response token counts).
    """
    b = batch.num_pairs
    counts = batch.response_token_counts()
    metrics = reward_metrics(out.chosen_rewards.detach(), out.rejected_rewards.detach())
    metrics["logps/chosen"] = policy_chosen.detach().mean()
    metrics["logps/rejected"] = policy_rejected.detach().mean()
    metrics["policy_margin_accuracy"] = policy_margin_accuracy(
        policy_chosen.detach(), policy_rejected.detach(), counts[:b], counts[b:]
    )
    weights = out.weights.detach()
    for k in range(weights.shape[-1]):
        metrics[f"ref_weight/{k}"] = weights[:, k].mean()
    metrics["ctro_clip_frac"] = torch.as_tensor(out.clip_fraction).detach().float()
    return metrics


def metric_names(num_refs: int) -> list[str]:
    """The keys :func:`preference_metrics` returns for ``num_refs`` references."""
    return [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margin",
        "rewards/accuracy",
        "logps/chosen",
        "logps/rejected",
        "policy_margin_accuracy",
        *(f"ref_weight/{k}" for k in range(num_refs)),
        "ctro_clip_frac",
    ]


def logged_metric_names(num_refs: int) -> set[str]:
    """Every ``train/`` and ``val/`` metric a training run with ``num_refs`` references logs
    from its batches (what a checkpoint may monitor)."""
    names = [*metric_names(num_refs), "loss"]
    return {f"{stage}/{name}" for stage in ("train", "val") for name in names}
