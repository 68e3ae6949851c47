"""``LiveReferences``: every reference scores each batch (no cache), for on-policy data and
for checking the cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftModel

from mrpo.data.tokenize import TokenizedPairs
from mrpo.data.types import PreferenceBatch, PreferenceExample
from mrpo.models import DTYPES
from mrpo.models.quantization import quantized_as
from mrpo.references.ensemble import ReferenceEnsemble
from mrpo.references.logps import RefLogps
from mrpo.references.scoring import adapters_disabled, model_device


class LiveReferences:
    """Scores rows with every reference on each call; the models stay in memory.

    A ``self`` reference runs the policy itself with its LoRA adapters disabled when the
    policy is a peft model in the reference's dtype (no second copy); otherwise it loads its
    own copy of the initial weights, since a fully fine-tuned policy moves away from them.
    References sharing weights and dtype share one loaded model.

    Args:
        ensemble: the references.
        policy: the policy being trained, if any.
        examples: the rows that :meth:`__call__` finds by ``PreferenceBatch.index``.
    """

    def __init__(
        self,
        ensemble: ReferenceEnsemble,
        *,
        policy: torch.nn.Module | None = None,
        examples: Sequence[PreferenceExample] = (),
    ) -> None:
        self.ensemble = ensemble
        self.policy = policy
        self.examples = {ex.index: ex for ex in examples}
        self.uses_policy = tuple(self._can_use_policy(k) for k in range(len(ensemble)))
        self._models: dict[tuple[str, str], torch.nn.Module] = {}
        for group, members in ensemble.model_groups().items():
            if not all(self.uses_policy[k] for k in members):
                self._models[group] = ensemble.load_model(members[0])

    def _can_use_policy(self, k: int) -> bool:
        ref = self.ensemble.resolved[k]
        if not ref.is_self or not isinstance(self.policy, PeftModel):
            return False
        # A 4-bit policy's base is the 4-bit model: it stands in only for the same quantization.
        if quantized_as(self.policy) != ref.spec.quantization:
            return False
        want = DTYPES[ref.spec.dtype]
        return want == "auto" or next(self.policy.parameters()).dtype == want

    def _scores(self, k: int, pairs: TokenizedPairs) -> RefLogps:
        if self.uses_policy[k]:
            assert self.policy is not None  # uses_policy is only set for a given peft policy
            with adapters_disabled(self.policy) as base:
                return self.ensemble.score(k, base, pairs)
        return self.ensemble.score(k, self._models[self.ensemble.resolved[k].model_group], pairs)

    def score(self, examples: Sequence[PreferenceExample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of ``examples``, each reference's ``length_normalize`` (and
        LD-DPO's ``ld_alpha``) applied.

        Returns:
            ``(ref_chosen, ref_rejected)``, each (K, B) float32 on the CPU, rows in input order.
        """
        memo: dict[Any, TokenizedPairs] = {}
        chosen, rejected = [], []
        for k in range(len(self.ensemble)):
            scores = self._scores(k, self.ensemble.tokenize(k, examples, memo))
            c, r = self.ensemble.values(k, scores)
            chosen.append(c)
            rejected.append(r)
        return torch.stack(chosen), torch.stack(rejected)

    def to(self, device: torch.device | str) -> LiveReferences:
        """Move the reference models this object owns (never the policy) to ``device``."""
        device = torch.device(device)
        for group, model in self._models.items():
            if model_device(model) != device:
                self._models[group] = model.to(device)
        return self

    def __call__(self, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs (K, B) of a batch's rows, on the batch's device.

        Raises:
            ValueError: a row of the batch is not among the ``examples`` given.
        """
        rows = batch_examples(batch, self.examples, "live references")
        device = batch.input_ids.device
        self.to(device)
        chosen, rejected = self.score(rows)
        return chosen.to(device), rejected.to(device)


def batch_examples(
    batch: PreferenceBatch, examples: dict[int, PreferenceExample], owner: str
) -> list[PreferenceExample]:
    """The examples of ``batch``'s rows, in its order, found by ``PreferenceBatch.index``.

    Raises:
        ValueError: a row is not among ``examples`` (``owner`` names who was not given it).
    """
    index = batch.index.tolist()
    missing = [i for i in index if i not in examples]
    if missing:
        raise ValueError(f"{owner} were not given the batch rows {missing[:5]}")
    return [examples[i] for i in index]
