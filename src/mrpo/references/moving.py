"""Moving references in an ensemble: copies of the policy that follow it, scored live.

:class:`MovingReferences` holds one frozen copy of the policy's weights per ``source: moving``
pool entry and updates it from the policy on its schedule
(:class:`~mrpo.references.updates.MovingSchedule`). It is an ``nn.Module``: given to
:class:`~mrpo.training.module.PreferenceModule` it is a submodule, so the Trainer moves it to
the policy's device and its weights are part of every checkpoint (a resumed run continues
with the reference where it was).

:class:`MixedReferences` gives the objective all K references' log-probs in pool order: the
static ones from wherever they come (the cache, through the batch, or live scoring) and the
moving ones scored on each batch with their current weights, under ``no_grad``. A moving
reference is never cached: its numbers change with every update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mrpo.data.tokenize import TokenizedPairs
from mrpo.data.types import PreferenceBatch, PreferenceExample
from mrpo.references.ensemble import ReferenceEnsemble
from mrpo.references.live import batch_examples

log = logging.getLogger("mrpo.references")

StaticReferences = Callable[[PreferenceBatch], tuple[torch.Tensor, torch.Tensor]]
"""A batch -> the static references' ``(ref_chosen, ref_rejected)``, each (K_static, B)."""


class MovingReferences(torch.nn.Module):
    """Frozen copies of the policy's weights, one per moving reference of an ensemble.

    Each copy is reference ``k``'s own model (:meth:`ReferenceEnsemble.load_model`: the
    policy's initial weights from its source, in the reference's dtype, frozen). Its
    parameters are matched to the policy's by name.

    Args:
        ensemble: all K references (the moving ones among them).
        policy: the policy the copies follow (a whole model: not sharded, no LoRA adapters).

    Raises:
        ValueError: the ensemble has no moving reference, or a copy's parameter names differ
            from the policy's.
    """

    def __init__(self, ensemble: ReferenceEnsemble, policy: torch.nn.Module) -> None:
        super().__init__()
        self.positions = tuple(k for k, s in enumerate(ensemble.specs) if s.is_moving)
        if not self.positions:
            raise ValueError("the ensemble has no moving reference (source: moving)")
        self.schedules = tuple(ensemble.specs[k].schedule() for k in self.positions)
        self.copies = torch.nn.ModuleList(ensemble.load_model(k) for k in self.positions)
        want = {name for name, _ in policy.named_parameters()}
        for k, copy in zip(self.positions, self.copies, strict=True):
            got = {name for name, _ in copy.named_parameters()}
            if got != want:
                raise ValueError(
                    f"moving reference {ensemble.specs[k].name!r}: its parameters differ from "
                    f"the policy's ({sorted(got ^ want)[:3]} ...); it follows a whole policy "
                    "without LoRA adapters"
                )
            log.info(
                "reference %s follows the policy (%s), scored live, never cached",
                ensemble.specs[k].name,
                ensemble.specs[k].schedule(),
            )

    def model(self, k: int) -> torch.nn.Module:
        """The current model of moving reference ``k`` (its position in the ensemble)."""
        return self.copies[self.positions.index(k)]

    def step(self, policy: torch.nn.Module, step: int) -> list[int]:
        """Update the copies whose schedule is due after ``step`` optimizer steps.

        Args:
            policy: the policy, after its ``step``-th optimizer step.
            step: optimizer steps done (``trainer.global_step``).

        Returns:
            The ensemble positions of the references updated.
        """
        source = dict(policy.named_parameters())
        updated = []
        for k, schedule, copy in zip(self.positions, self.schedules, self.copies, strict=True):
            if schedule.due(step):
                names = [name for name, _ in copy.named_parameters()]
                schedule.apply_(list(copy.parameters()), [source[n] for n in names])
                updated.append(k)
        return updated


class MixedReferences:
    """All K references' log-probs of a batch: the static ones and the moving ones, in pool order.

    Args:
        ensemble: all K references (tokenizes and scores the moving ones).
        moving: their current models.
        examples: the rows a batch's ``index`` refers to.
        static: the static references' log-probs of a batch, (K - M, B) each, in pool order
            (the batch's cached values, or live scoring); None when every reference moves.
    """

    def __init__(
        self,
        ensemble: ReferenceEnsemble,
        moving: MovingReferences,
        examples: Sequence[PreferenceExample],
        static: StaticReferences | None = None,
    ) -> None:
        self.ensemble = ensemble
        self.moving = moving
        self.examples = {ex.index: ex for ex in examples}
        self.static = static
        self.static_positions = [k for k in range(len(ensemble)) if k not in moving.positions]
        if static is None and self.static_positions:
            raise ValueError(f"references {self.static_positions} are static but none was given")

    def _moving_scores(
        self, examples: Sequence[PreferenceExample]
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        memo: dict[Any, TokenizedPairs] = {}
        out = {}
        for k in self.moving.positions:
            pairs = self.ensemble.tokenize(k, examples, memo)
            scores = self.ensemble.score(k, self.moving.model(k), pairs)  # no_grad, eval mode
            out[k] = self.ensemble.values(k, scores)
        return out

    def __call__(self, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs ``(ref_chosen, ref_rejected)``, each (K, B) float32 on the
        batch's device.

        Raises:
            ValueError: a row of the batch is not among the ``examples`` given.
        """
        examples = batch_examples(batch, self.examples, "moving references")
        device = batch.input_ids.device
        rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.static is not None:
            chosen, rejected = self.static(batch)
            for j, k in enumerate(self.static_positions):
                rows[k] = (chosen[j].to(device), rejected[j].to(device))
        for k, (c, r) in self._moving_scores(examples).items():
            rows[k] = (c.to(device), r.to(device))
        order = range(len(self.ensemble))
        return torch.stack([rows[k][0] for k in order]), torch.stack([rows[k][1] for k in order])


def cached_in_batch(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The static references' cached log-probs a batch carries (:class:`StaticReferences`).

    Raises:
        RuntimeError: the batch carries none (the collator was built without the table).
    """
    if batch.ref_chosen is None or batch.ref_rejected is None:
        raise RuntimeError("batch carries no cached reference log-probs")
    return batch.ref_chosen, batch.ref_rejected
