"""Preference accuracy over a whole held-out set of pairs.

Scores all N pairs at once (not as a mean of batch means) from tensors gathered over the set,
with the formulas of :mod:`mrpo.metrics`, so any objective can be evaluated without importing it:
pass the rewards its output carries (``.chosen_rewards``, ``.rejected_rewards``).

- Implicit-reward accuracy (TRL's ``rewards/accuracies``): mean of 1[r(y_w) > r(y_l)] with the
  rewards the run's own objective defines (for DPO, β(ℓθ(y) − ℓref(y))).
- Policy margin accuracy: mean of 1[ℓθ(y_w)/n_w > ℓθ(y_l)/n_l] with ℓθ the summed policy
  log-prob of a response and n its token count. It needs no reference, so it compares runs of
  different objectives (DPO, multi-DPO, MRPO) on the same footing.

Ties count as wrong (strict ``>``), as in TRL.
"""

from __future__ import annotations

import torch

from mrpo.metrics import policy_margin_accuracy, reward_metrics


def evaluate_preferences(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_num_tokens: torch.Tensor,
    rejected_num_tokens: torch.Tensor,
    chosen_rewards: torch.Tensor | None = None,
    rejected_rewards: torch.Tensor | None = None,
    *,
    prefix: str = "val/",
) -> dict[str, float]:
    """Accuracy and margin metrics of N preference pairs.

    Args:
        policy_chosen_logps: (N,) summed policy log-probs ℓθ(y_w).
        policy_rejected_logps: (N,) summed policy log-probs ℓθ(y_l).
        chosen_num_tokens: (N,) response token counts n_w, all > 0.
        rejected_num_tokens: (N,) response token counts n_l, all > 0.
        chosen_rewards: (N,) implicit rewards of the chosen responses, or None (with
            ``rejected_rewards``) to skip the reward metrics.
        rejected_rewards: (N,) implicit rewards of the rejected responses.
        prefix: prepended to every metric name.

    Returns:
        ``{prefix + name: value}`` for ``policy_margin_accuracy``, ``logps/chosen``,
        ``logps/rejected`` and, given rewards, ``rewards/{chosen,rejected,margin,accuracy}``.

    Raises:
        ValueError: on mismatched shapes, an empty set, non-positive token counts, or only one
            of the two reward tensors.
    """
    tensors = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "chosen_num_tokens": chosen_num_tokens,
        "rejected_num_tokens": rejected_num_tokens,
    }
    if (chosen_rewards is None) != (rejected_rewards is None):
        raise ValueError("give both chosen_rewards and rejected_rewards, or neither")
    if chosen_rewards is not None and rejected_rewards is not None:
        tensors |= {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
    shape = tuple(policy_chosen_logps.shape)
    for name, t in tensors.items():
        if t.dim() != 1 or tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape (N,) = {shape}, got {tuple(t.shape)}")
    if shape[0] == 0:
        raise ValueError("no preference pairs to evaluate")
    if (chosen_num_tokens <= 0).any() or (rejected_num_tokens <= 0).any():
        raise ValueError("response token counts must be positive")

    out = {
        "policy_margin_accuracy": policy_margin_accuracy(
            policy_chosen_logps, policy_rejected_logps, chosen_num_tokens, rejected_num_tokens
        ),
        "logps/chosen": policy_chosen_logps.double().mean(),
        "logps/rejected": policy_rejected_logps.double().mean(),
    }
    if chosen_rewards is not None and rejected_rewards is not None:
        out |= reward_metrics(chosen_rewards.double(), rejected_rewards.double())
    return {prefix + name: float(value) for name, value in out.items()}
