"""Thompson-sampling reference selection (Wu & Echarghaoui, arXiv 2512.10040).

Each reference is an arm of a K-armed Bernoulli bandit with a Beta(a_k, b_k) posterior over its
chance of improving the policy. The trainer drives it explicitly, once per optimizer step:

1. ``k = objective.weighting.select()`` before the step: samples θ_k ~ Beta(a_k, b_k) and
   keeps k* = argmax θ_k; the objective then uses one-hot weights on k*, i.e. a
   single-reference DPO step against reference k* (CTRO, if on, still clips k* >= 2).
2. Take the step, then measure preference accuracy on a small validation subsample.
3. ``objective.weighting.update(k, improved=accuracy > previous_accuracy)``: a_k += 1 when the
   accuracy went up, b_k += 1 otherwise.

Sampling uses a dedicated seeded ``torch.Generator`` (never the global RNG), whose state is part
of :meth:`ThompsonSampling.state_dict`, so a resumed run draws the same arms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from mrpo.domains import Domain, Items, Number
from mrpo.errors import OptionError
from mrpo.objectives.weighting.strategies import WeightStrategy, broadcast_weights


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def sample_gamma(shape: float, generator: torch.Generator) -> float:
    """One draw from Gamma(shape, 1) (Marsaglia & Tsang 2000), using only ``generator``.

    ``torch.distributions`` cannot take a generator, hence this small exact sampler. For
    shape < 1 it uses Gamma(shape) = Gamma(shape + 1) · U^(1/shape).
    """
    if shape < 1.0:
        return sample_gamma(shape + 1.0, generator) * _uniform(generator) ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = float(torch.randn((), generator=generator, dtype=torch.float64))
        v = (1.0 + c * x) ** 3
        if v <= 0.0:
            continue
        u = _uniform(generator)
        if u > 0.0 and math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def sample_beta(a: float, b: float, generator: torch.Generator) -> float:
    """One draw from Beta(a, b) as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b)."""
    x, y = sample_gamma(a, generator), sample_gamma(b, generator)
    return x / (x + y) if x + y > 0.0 else 0.5


class ThompsonSampling(WeightStrategy):
    """Online bandit over the references; one-hot weights on the last selected arm.

    Args:
        prior: (a, b) of the Beta prior shared by all arms, both > 0 (default (5, 5)).
        seed: seed of the strategy's own generator.
        feedback_size: validation pairs the trainer scores after each step for the reward.
        num_refs: K; may instead be given later through :meth:`set_num_refs` (the objective
            does so when it is built with ``get_objective(..., num_refs=K)``).
    """

    name = "thompson"
    params: ClassVar[Mapping[str, Domain]] = {
        "prior": Items(Number(float, gt=0), min_len=2, max_len=2),
        "seed": Number(int, ge=0, lt=2**64),
        "feedback_size": Number(int, ge=1),
    }
    stateful = True
    needs_feedback = True

    def __init__(
        self,
        prior: Sequence[float] = (5.0, 5.0),
        seed: int = 0,
        feedback_size: int = 16,
        num_refs: int | None = None,
    ) -> None:
        prior = tuple(prior)
        if len(prior) != 2 or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p > 0
            for p in prior
        ):
            raise OptionError(
                "prior", f"option 'prior' must be two positive numbers (a, b), got {prior!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise OptionError("seed", f"option 'seed' must be an int, got {seed!r}")
        if (
            isinstance(feedback_size, bool)
            or not isinstance(feedback_size, int)
            or feedback_size < 1
        ):
            raise OptionError(
                "feedback_size",
                f"option 'feedback_size' must be a positive number of pairs, got {feedback_size!r}",
            )
        self.prior = (float(prior[0]), float(prior[1]))
        self.seed = seed
        self.feedback_size = feedback_size
        self.generator = torch.Generator().manual_seed(seed)
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.current_arm: int | None = None
        if num_refs is not None:
            self.set_num_refs(num_refs)

    @property
    def num_refs(self) -> int | None:
        """K once known, else None."""
        return len(self.alpha) or None

    def check_num_refs(self, num_refs: int) -> None:
        if self.num_refs is not None and self.num_refs != num_refs:
            raise ValueError(
                f"weighting 'thompson' has {self.num_refs} arms, got K={num_refs} references"
            )

    def set_num_refs(self, num_refs: int) -> None:
        if self.num_refs is None:
            if num_refs < 1:
                raise ValueError(f"weighting 'thompson' needs K >= 1 references, got {num_refs}")
            self.alpha, self.beta = [self.prior[0]] * num_refs, [self.prior[1]] * num_refs
        self.check_num_refs(num_refs)

    def select(self) -> int:
        """Sample θ_k ~ Beta(a_k, b_k) for every arm and select k* = argmax θ_k (ties: lowest k)."""
        if self.num_refs is None:
            raise RuntimeError(
                "weighting 'thompson' does not know the number of references yet: pass "
                "num_refs to get_objective(...) or call weighting.set_num_refs(K) first"
            )
        samples = [
            sample_beta(a, b, self.generator) for a, b in zip(self.alpha, self.beta, strict=True)
        ]
        self.current_arm = max(range(len(samples)), key=samples.__getitem__)
        return self.current_arm

    def update(self, arm: int, improved: bool) -> None:
        """Bernoulli reward of ``arm``: a_arm += 1 if ``improved`` else b_arm += 1."""
        if isinstance(arm, bool) or not isinstance(arm, int) or not 0 <= arm < len(self.alpha):
            raise ValueError(f"arm must be an int in [0, {len(self.alpha)}), got {arm!r}")
        if improved:
            self.alpha[arm] += 1.0
        else:
            self.beta[arm] += 1.0

    def weights(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        self.check_num_refs(ref_chosen.shape[0])
        if self.current_arm is None:
            raise RuntimeError(
                "weighting 'thompson' is used before select(): call "
                "objective.weighting.select() before each training step"
            )
        row = torch.zeros(ref_chosen.shape[0])
        row[self.current_arm] = 1.0
        return broadcast_weights(ref_chosen, row)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alpha": list(self.alpha),
            "beta": list(self.beta),
            "current_arm": self.current_arm,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.alpha = [float(v) for v in state["alpha"]]
        self.beta = [float(v) for v in state["beta"]]
        self.current_arm = state["current_arm"]
        self.generator.set_state(state["generator_state"])

    def __repr__(self) -> str:
        return f"ThompsonSampling(prior={self.prior}, seed={self.seed})"
