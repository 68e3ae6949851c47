"""Reference-weight strategies: small objects that give the (B, K) weights α for a batch.

Protocol (:class:`WeightStrategy`):

- ``weights(ref_chosen, ref_rejected) -> (B, K)``: the weights for this batch. Never changes
  the strategy's state, so validation batches can call it freely.
- ``observe(ref_chosen, ref_rejected)``: record a *training* batch (only the sliding window
  uses it), the one way a batch changes the state; called through ``Objective.observe``.
- ``check_num_refs(K)``: raise if K does not fit the configuration or the state, changing
  nothing (run on every batch); ``set_num_refs(K)``: the same, once, when the objective is built
  with K, also sizing the state needed before the first batch (Thompson sampling's arms).
- ``state_dict()`` / ``load_state_dict()``: plain data, so stateful strategies survive a
  checkpoint resume.

What a strategy needs from the training loop is declared on its class, so the trainer asks
instead of testing names: ``params`` (its keyword options, which are also its keys under
``weights.`` in the configs), ``fits_on_validation`` (``fit(...)`` is called once on the
validation split's reference log-probs before training) and ``needs_feedback`` (an online
strategy driven through ``select()`` / ``update()`` around every optimizer step, rewarded on
``feedback_size`` validation pairs; see :class:`mrpo.callbacks.bandit.ThompsonFeedback`).

Reference log-probs are (K, B) with row 0 the primary reference. Every strategy returns
α >= 0 with rows summing to 1, in the dtype and on the device of ``ref_chosen``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from mrpo.domains import Domain, Flag, Items, Number
from mrpo.errors import OptionError
from mrpo.objectives.weighting.formulas import (
    arwc_weights,
    check_fixed_weights,
    one_hot_argmax,
    vaw_weights,
    vdw_weights,
)


class WeightStrategy:
    """Base class of the weight strategies (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Domain]] = {}
    """Keyword options the strategy accepts (``get_objective`` options, ``weights.<param>``),
    each with its domain (checked before the strategy is built)."""
    stateful: ClassVar[bool] = False
    fits_on_validation: ClassVar[bool] = False
    """True: the trainer calls ``fit(val_chosen, val_rejected, chosen_tokens, rejected_tokens)``
    with the validation split's (K, N) reference log-probs and token counts before training."""
    needs_feedback: ClassVar[bool] = False
    """True: the trainer calls ``select()`` before and ``update(arm, improved)`` after every
    optimizer step, scoring ``feedback_size`` validation pairs for the reward."""

    def weights(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        """(B, K) weights for a batch with (K, B) reference log-probs."""
        raise NotImplementedError

    def observe(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> None:
        """Record a training batch; a no-op for stateless strategies."""

    def check_num_refs(self, num_refs: int) -> None:
        """Raise if K does not fit the configuration or the state; changes nothing."""

    def set_num_refs(self, num_refs: int) -> None:
        """Take K once, when the objective is built (Thompson sampling sizes its arms)."""
        self.check_num_refs(num_refs)

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state; ``name`` lets a checkpoint of another strategy be detected."""
        return {"name": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; raises ValueError for another strategy's state."""
        if state.get("name") != self.name:
            raise ValueError(
                f"weighting state is for {state.get('name')!r}, not {self.name!r}; the run's "
                "'weighting' option differs from the checkpoint's"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def broadcast_weights(ref_chosen: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Broadcast a (K,) weight row to (B, K) in the dtype/device of ``ref_chosen`` (K, B)."""
    row = row.to(dtype=ref_chosen.dtype, device=ref_chosen.device)
    return row.expand(ref_chosen.shape[1], ref_chosen.shape[0])


class PrimaryReference(WeightStrategy):
    """All weight on reference 0 (one-hot): single-reference DPO against the primary."""

    name = "primary"

    def weights(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        row = torch.zeros(ref_chosen.shape[0])
        row[0] = 1.0
        return broadcast_weights(ref_chosen, row)


class UniformWeights(WeightStrategy):
    """α_k = 1/K."""

    name = "uniform"

    def weights(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        return broadcast_weights(
            ref_chosen, torch.full((ref_chosen.shape[0],), 1.0 / ref_chosen.shape[0])
        )


class FixedWeights(WeightStrategy):
    """A given weight list, normalized to sum to 1 (``fixed_weights=[...]``, one per reference)."""

    name = "fixed"
    params: ClassVar[Mapping[str, Domain]] = {
        "fixed_weights": Items(Number(float, ge=0), min_len=1)
    }

    def __init__(self, fixed_weights: Sequence[float] | None = None) -> None:
        if fixed_weights is None:
            raise OptionError(
                "fixed_weights",
                "weighting 'fixed' needs option 'fixed_weights' (one per reference)",
            )
        values = check_fixed_weights(fixed_weights, "fixed_weights")
        total = sum(values)
        self.fixed_weights = tuple(v / total for v in values)

    def check_num_refs(self, num_refs: int) -> None:
        if len(self.fixed_weights) != num_refs:
            raise OptionError(
                "fixed_weights",
                f"option 'fixed_weights' has {len(self.fixed_weights)} entries but there are "
                f"K={num_refs} references",
            )

    def weights(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        self.check_num_refs(ref_chosen.shape[0])
        return broadcast_weights(ref_chosen, torch.tensor(self.fixed_weights, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"FixedWeights({list(self.fixed_weights)})"


class ARWCWeights(WeightStrategy):
    """Per-example adaptive weights from the references' own margins (the MRPO paper).

    See :func:`~mrpo.objectives.weighting.formulas.arwc_weights`; the 0/0 case (all margins 0)
    puts all weight on the primary reference.
    """

    name = "arwc"

    def weights(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        return arwc_weights(ref_chosen, ref_rejected)


class _ValidationWeights(WeightStrategy):
    """Offline weights fitted once on a validation split, then shared by every example."""

    stateful = True
    fits_on_validation = True
    _fit_function: ClassVar[Any]

    def __init__(self) -> None:
        self.fitted: tuple[float, ...] | None = None

    def fit(
        self,
        val_chosen: torch.Tensor,
        val_rejected: torch.Tensor,
        chosen_tokens: torch.Tensor,
        rejected_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Fit the weights on validation reference log-probs; returns the (K,) weights.

        Args:
            val_chosen: (K, N) summed reference log-probs of the chosen responses.
            val_rejected: (K, N) likewise for the rejected responses.
            chosen_tokens: (K, N) response token counts of each reference's tokenization.
            rejected_tokens: (K, N) likewise for the rejected responses.
        """
        fitted = type(self)._fit_function(val_chosen, val_rejected, chosen_tokens, rejected_tokens)
        self.fitted = tuple(float(v) for v in fitted)
        return fitted

    def check_num_refs(self, num_refs: int) -> None:
        if self.fitted is not None and len(self.fitted) != num_refs:
            raise ValueError(
                f"weighting {self.name!r} was fitted for K={len(self.fitted)} references, "
                f"got K={num_refs}"
            )

    def weights(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        if self.fitted is None:
            raise RuntimeError(
                f"weighting {self.name!r} is used before fit(): call "
                "objective.weighting.fit(val_chosen, val_rejected, chosen_tokens, "
                "rejected_tokens) with validation reference log-probs first"
            )
        self.check_num_refs(ref_chosen.shape[0])
        return broadcast_weights(ref_chosen, torch.tensor(self.fitted, dtype=torch.float64))

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights": None if self.fitted is None else list(self.fitted)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        weights = state.get("weights")
        self.fitted = None if weights is None else tuple(float(v) for v in weights)


class VDWWeights(_ValidationWeights):
    """Validation discrimination weighting (``vdw``), see :func:`~.weighting.vdw_weights`."""

    name = "vdw"
    _fit_function = staticmethod(vdw_weights)


class VAWWeights(_ValidationWeights):
    """Validation accuracy weighting (``vaw``), see :func:`~.weighting.vaw_weights`."""

    name = "vaw"
    _fit_function = staticmethod(vaw_weights)


class SlidingWindowARWC(WeightStrategy):
    """Online weights: the batch-mean ARWC weights of the previous training batch(es).

    Update semantics: the weights for training batch t are the mean over the last ``window``
    observed batches of each batch's mean ARWC weight (B-mean of
    :func:`~mrpo.objectives.weighting.formulas.arwc_weights`, unclipped log-probs); before any batch
    has been observed they are uniform. With the default ``window=1``, batch 1 uses uniform weights
    and batch t uses batch t−1's mean ARWC weights. A batch's own ARWC weights never weight its own
    loss, which removes ARWC's per-example label leakage. Only :meth:`observe` changes the state
    (through ``Objective.observe``, training batches only); validation batches never do.

    ``one_hot=True`` is the one-hot variant: all weight on the reference with the largest
    windowed weight (:func:`~mrpo.objectives.weighting.formulas.one_hot_argmax`, ties to the
    lowest index), so each batch is a single-reference step; before any batch the windowed
    weights are uniform, so batch 1 uses the primary reference.
    """

    name = "sliding_window"
    params: ClassVar[Mapping[str, Domain]] = {"window": Number(int, ge=1), "one_hot": Flag()}
    stateful = True

    def __init__(self, window: int = 1, one_hot: bool = False) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise OptionError("window", f"option 'window' must be an int >= 1, got {window!r}")
        if not isinstance(one_hot, bool):
            raise OptionError("one_hot", f"option 'one_hot' must be true or false, got {one_hot!r}")
        self.window = window
        self.one_hot = one_hot
        self.history: deque[tuple[float, ...]] = deque(maxlen=window)

    def check_num_refs(self, num_refs: int) -> None:
        if self.history and len(self.history[0]) != num_refs:
            raise ValueError(
                f"weighting 'sliding_window' has seen K={len(self.history[0])} references, "
                f"got K={num_refs}"
            )

    def current(self, num_refs: int) -> torch.Tensor:
        """(K,) float64 weights the next batch will use."""
        self.check_num_refs(num_refs)
        if not self.history:
            windowed = torch.full((num_refs,), 1.0 / num_refs, dtype=torch.float64)
        else:
            windowed = torch.tensor(list(self.history), dtype=torch.float64).mean(dim=0)
        return one_hot_argmax(windowed) if self.one_hot else windowed

    def weights(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        return broadcast_weights(ref_chosen, self.current(ref_chosen.shape[0]))

    def observe(self, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> None:
        self.check_num_refs(ref_chosen.shape[0])
        batch_mean = arwc_weights(ref_chosen, ref_rejected).mean(dim=0)
        self.history.append(tuple(float(v) for v in batch_mean))

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "window": self.window,
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = deque(
            (tuple(float(v) for v in h) for h in state["history"]), maxlen=self.window
        )

    def __repr__(self) -> str:
        return f"SlidingWindowARWC(window={self.window}, one_hot={self.one_hot})"
