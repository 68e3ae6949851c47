"""The configured objective object: input checks, weight resolution, state for checkpoints.

Shapes: B preference pairs, K references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mrpo.errors import OptionError
from mrpo.objectives.losses import ObjectiveFunction
from mrpo.objectives.types import ObjectiveConfig, ObjectiveOutput
from mrpo.objectives.weighting.formulas import expand_weights
from mrpo.objectives.weighting.strategies import WeightStrategy


@dataclass(frozen=True)
class ObjectiveSpec:
    """What the registry knows about an objective.

    Attributes:
        name: config name (``loss=<name>``).
        function: the pure :data:`~mrpo.objectives.losses.ObjectiveFunction`.
        description: one line for listings.
        needs_reference: whether reference log-probs are needed at all.
        min_refs: smallest K accepted.
        max_refs: largest K that is used (None: no limit). DPO uses reference 0 only.
        weighted: whether the objective combines references with a weight strategy; if not,
            its weights are one-hot on reference 0 and explicit ``weights`` are refused.
        options: keyword options accepted by ``get_objective`` besides ``beta``/``num_refs``.
        defaults: default values of some of those options for this objective.
    """

    name: str
    function: ObjectiveFunction
    description: str
    needs_reference: bool = True
    min_refs: int = 1
    max_refs: int | None = None
    weighted: bool = True
    options: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)


def _check_policy(name: str, tensor: object, shape: tuple[int, ...] | None) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {type(tensor).__name__}")
    if tensor.dim() != 1 or tensor.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B,) with B >= 1, got {tuple(tensor.shape)}")
    if shape is not None and tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} like policy_chosen, got {tensor.shape}")
    return tensor


def _check_reference(name: str, tensor: object, batch: int, num_refs: int | None) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] != batch:
        raise ValueError(
            f"{name} must have shape (K, B) with K >= 1 and B={batch}, got {tuple(tensor.shape)}"
        )
    if num_refs is not None and tensor.shape[0] != num_refs:
        raise ValueError(
            f"{name} has K={tensor.shape[0]} references but ref_chosen has K={num_refs}"
        )
    return tensor


def prepare_inputs(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and cast to the compute dtype: float64 if any input is, else float32.

    Half-precision inputs are upcast (reference arithmetic is never done in float16). The
    policy tensors keep their autograd graph; reference tensors are detached.

    Raises:
        ValueError: naming the argument, for a non-float tensor or a wrong shape.
    """
    _check_policy("policy_chosen", policy_chosen, None)
    _check_policy("policy_rejected", policy_rejected, tuple(policy_chosen.shape))
    batch = policy_chosen.shape[0]
    _check_reference("ref_chosen", ref_chosen, batch, None)
    _check_reference("ref_rejected", ref_rejected, batch, ref_chosen.shape[0])
    tensors = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return (
        policy_chosen.to(dtype),
        policy_rejected.to(dtype),
        ref_chosen.detach().to(dtype),
        ref_rejected.detach().to(dtype),
    )


class Objective:
    """A configured objective: call it on a batch of log-probs to get an :class:`ObjectiveOutput`.

    Built by :func:`mrpo.objectives.get_objective`. Attributes: ``name``, ``spec``,
    ``config`` (the validated scalar options) and ``weighting`` (the weight strategy object;
    the trainer drives stateful strategies through it, e.g. ``weighting.fit(...)`` for
    ``vdw``/``vaw`` and ``weighting.select()``/``weighting.update(...)`` for ``thompson``).
    """

    def __init__(self, spec: ObjectiveSpec, config: ObjectiveConfig, weighting: WeightStrategy):
        self.spec = spec
        self.config = config
        self.weighting = weighting

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def beta(self) -> float:
        return self.config.beta

    @property
    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    @property
    def num_refs_required(self) -> tuple[int, int | None]:
        """(min, max) number of references K the objective uses; max None means no limit."""
        if self.config.harmonic_pairing == "official":
            return (2, 2)
        return (self.spec.min_refs, self.spec.max_refs)

    def check_num_refs(self, num_refs: int) -> None:
        """Raise :class:`~mrpo.errors.OptionError` (naming the option) or ValueError (the weighting
        holds another K) if the objective cannot use K = ``num_refs``; a pure check, run on every
        batch. A K above ``max_refs`` is accepted: the first ``max_refs`` rows are used."""
        low, _ = self.num_refs_required
        if num_refs < low:
            raise OptionError(
                "num_refs",
                f"objective {self.name!r} needs at least {low} reference(s), got K={num_refs}",
            )
        if self.config.harmonic_pairing == "official" and num_refs != 2:
            raise OptionError(
                "harmonic_pairing",
                "option 'harmonic_pairing'='official' needs exactly K=2 references, "
                f"got K={num_refs}",
            )
        self.weighting.check_num_refs(num_refs)

    def __call__(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        token_counts: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> ObjectiveOutput:
        """Compute the objective on a batch; changes no state (see :meth:`observe`).

        Args:
            policy_chosen: (B,) policy log-probs ℓθ(y_w) (summed over response tokens, or
                length-normalized); gradients flow back through them.
            policy_rejected: (B,) ℓθ(y_l).
            ref_chosen: (K, B) reference log-probs ℓ_k(y_w), row 0 the primary reference.
                Detached: references never receive a gradient.
            ref_rejected: (K, B) ℓ_k(y_l).
            weights: None to use the configured strategy, or explicit (K,) / (B, K)
                non-negative weights (rows are normalized to sum to 1). Refused by objectives
                that use reference 0 only (DPO).
            token_counts: (B,) response token counts of y_w and y_l; needed by the loss types
                that normalize by length or read the NLL (``config.needs_token_counts``).

        Returns:
            :class:`ObjectiveOutput`, in float64 if any input is float64, else float32.

        Raises:
            ValueError: for wrong shapes, a K the objective cannot use, or invalid weights.
        """
        policy_chosen, policy_rejected, ref_chosen, ref_rejected = prepare_inputs(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected
        )
        num_refs, batch = ref_chosen.shape
        self.check_num_refs(num_refs)
        if weights is None:
            used = self.weighting.weights(ref_chosen, ref_rejected)
        elif not self.spec.weighted:
            raise ValueError(
                f"objective {self.name!r} uses reference 0 only and takes no weights; "
                "pass weights=None"
            )
        else:
            used = expand_weights(weights, num_refs, batch, like=ref_chosen)
        if token_counts is None and self.config.needs_token_counts:
            raise ValueError(
                f"loss_type={self.config.loss_type!r} needs token_counts (response lengths)"
            )
        return self.spec.function(
            policy_chosen,
            policy_rejected,
            ref_chosen,
            ref_rejected,
            used,
            self.config,
            token_counts,
        )

    def observe(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> None:
        """Record a training batch's (K, B) reference log-probs in a stateful weighting, the one
        way a batch reaches its state; only once the batch's loss is found finite (a skipped
        batch must leave no trace)."""
        self.weighting.observe(ref_chosen, ref_rejected)

    def state_dict(self) -> dict[str, Any]:
        """State to store in a checkpoint (the weight strategy's state)."""
        return {"objective": self.name, "weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ValueError if it belongs to another objective."""
        if state.get("objective") != self.name:
            raise ValueError(
                f"objective state is for {state.get('objective')!r}, not {self.name!r}"
            )
        self.weighting.load_state_dict(state["weighting"])

    def __repr__(self) -> str:
        return f"Objective({self.name!r}, {self.config}, weighting={self.weighting!r})"
