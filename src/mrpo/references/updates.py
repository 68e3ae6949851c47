"""How a moving reference follows the policy (TR-DPO, Gorbatovski et al., arXiv 2404.09656).

A moving reference is a pool entry with ``source: moving``: a copy of the policy's initial
weights that is updated from the policy every ``every_n_steps`` optimizer steps:

- ``soft``: ref <- alpha * policy + (1 - alpha) * ref   (TR-DPO's soft update, alpha in (0, 1]);
- ``hard``: ref <- policy                               (TR-DPO's hard update; alpha = 1).

The defaults are TRL's (``DPOConfig.ref_model_mixup_alpha = 0.6``,
``DPOConfig.ref_model_sync_steps = 512``). The update rules are pure in-place functions over
matching parameter tensors, one registry entry each (:data:`UPDATES`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mrpo.errors import OptionError

MOVING = "moving"
"""Reference source meaning a copy of the policy that follows it during training."""

TRL_MIXUP_ALPHA = 0.6
"""TRL's ``ref_model_mixup_alpha``: the policy's share in a soft update."""
TRL_SYNC_STEPS = 512
"""TRL's ``ref_model_sync_steps``: optimizer steps between two updates."""

UpdateFn = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], float], None]


@torch.no_grad()
def soft_update_(
    reference: Sequence[torch.Tensor], policy: Sequence[torch.Tensor], alpha: float
) -> None:
    """``reference[i] <- alpha * policy[i] + (1 - alpha) * reference[i]``, in place.

    Args:
        reference: the reference's tensors (any shapes), updated in place in their own dtype.
        policy: the policy's tensors, the same shapes in the same order.
        alpha: the policy's share, in (0, 1].
    """
    for ref, new in zip(reference, policy, strict=True):
        ref.lerp_(new.detach().to(ref.dtype), alpha)


@torch.no_grad()
def hard_update_(
    reference: Sequence[torch.Tensor], policy: Sequence[torch.Tensor], alpha: float = 1.0
) -> None:
    """``reference[i] <- policy[i]``, in place (``alpha`` is unused: a copy is alpha = 1)."""
    for ref, new in zip(reference, policy, strict=True):
        ref.copy_(new.detach())


@dataclass(frozen=True)
class UpdateRule:
    """An update rule and whether it takes ``alpha`` (a copy does not)."""

    fn: UpdateFn
    takes_alpha: bool


UPDATES: dict[str, UpdateRule] = {
    "soft": UpdateRule(soft_update_, takes_alpha=True),
    "hard": UpdateRule(hard_update_, takes_alpha=False),
}
"""``update`` name -> in-place rule ``(reference tensors, policy tensors, alpha)``."""


@dataclass(frozen=True)
class MovingSchedule:
    """When and how a moving reference follows the policy.

    Attributes:
        update: an :data:`UPDATES` name.
        alpha: the policy's share in a soft update (1.0 for ``hard``).
        every_n_steps: optimizer steps between two updates (the first after step
            ``every_n_steps``).
    """

    update: str = "soft"
    alpha: float = TRL_MIXUP_ALPHA
    every_n_steps: int = TRL_SYNC_STEPS

    def due(self, step: int) -> bool:
        """Whether the update runs once ``step`` optimizer steps are done."""
        return step > 0 and step % self.every_n_steps == 0

    def apply_(self, reference: Sequence[torch.Tensor], policy: Sequence[torch.Tensor]) -> None:
        """Run the update rule on matching tensors (see :data:`UPDATES`)."""
        UPDATES[self.update].fn(reference, policy, self.alpha)


def moving_schedule(
    update: str | None, alpha: float | None, every_n_steps: int | None
) -> MovingSchedule:
    """The schedule of a moving reference's options; None takes TRL's default.

    Raises:
        OptionError: naming ``update``, ``alpha`` or ``every_n_steps``.
    """
    name = "soft" if update is None else update
    rule = UPDATES.get(name)
    if rule is None:
        raise OptionError("update", f"must be one of {list(UPDATES)}, got {update!r}")
    if not rule.takes_alpha and alpha is not None:
        raise OptionError("alpha", f"update {name!r} copies the policy (alpha = 1); leave it unset")
    share = (TRL_MIXUP_ALPHA if alpha is None else alpha) if rule.takes_alpha else 1.0
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 < share <= 1.0:
        raise OptionError("alpha", f"must be in (0, 1], got {alpha!r}")
    every = TRL_SYNC_STEPS if every_n_steps is None else every_n_steps
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise OptionError("every_n_steps", f"must be an integer >= 1, got {every_n_steps!r}")
    return MovingSchedule(name, float(share), every)
