"""``RefLogps``: one reference's summed log-probs and token counts on N preference rows.

With LD-DPO (``loss.ld_alpha``) it also holds the sums up to each pair's shared length
(:mod:`mrpo.logprobs.shared`), two more columns.

The in-memory form of a reference cache entry (:mod:`mrpo.references.cache_entry`), looked up
by data set row index (indices may have gaps and come in any order).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from mrpo.logprobs import ld_active, ld_logps

FIELDS = ("index", "chosen", "rejected", "chosen_tokens", "rejected_tokens")
"""Names of the tensors of a :class:`RefLogps`, in a fixed order."""

SHARED_FIELDS = ("chosen_shared", "rejected_shared")
"""Names of the optional tensors of the sums up to each pair's shared length (LD-DPO)."""

DTYPES = {
    "index": torch.int64,
    "chosen": torch.float32,
    "rejected": torch.float32,
    "chosen_tokens": torch.int64,
    "rejected_tokens": torch.int64,
    "chosen_shared": torch.float32,
    "rejected_shared": torch.float32,
}
"""dtype of each tensor of a :class:`RefLogps`."""


def mean_per_token(sums: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token mean log-probs: (N,) float32 sums / (N,) int64 counts; 0 tokens gives 0."""
    return sums / tokens.clamp(min=1).to(sums.dtype)


def index_positions(
    sorted_index: torch.Tensor, index: torch.Tensor | Iterable[int]
) -> torch.Tensor:
    """Positions of data set row indices in a sorted index (a binary search per row).

    Args:
        sorted_index: (N,) int64 distinct row indices in increasing order.
        index: (B,) int64 row indices to find; repeats are allowed.

    Returns:
        (B,) int64 positions ``p`` with ``sorted_index[p] == index``.

    Raises:
        ValueError: if some index is not in ``sorted_index`` (the message lists a few).
    """
    want = torch.as_tensor(index, dtype=torch.int64).reshape(-1).cpu()
    n = sorted_index.shape[0]
    if n == 0:
        found = torch.zeros_like(want, dtype=torch.bool)
        pos = torch.zeros_like(want)
    else:
        pos = torch.searchsorted(sorted_index, want).clamp_(max=n - 1)
        found = sorted_index[pos] == want
    if not bool(found.all()):
        missing = want[~found].tolist()
        raise ValueError(
            f"{len(missing)} requested row(s) are not in the reference log-probs, "
            f"e.g. index {missing[:5]}"
        )
    return pos


@dataclass(frozen=True, eq=False)
class RefLogps:
    """One reference's log-probs on N preference rows.

    Attributes:
        index: (N,) int64 data set row indices, unique (not necessarily contiguous or sorted).
        chosen: (N,) float32 summed log-prob of each chosen response.
        rejected: (N,) float32 summed log-prob of each rejected response.
        chosen_tokens: (N,) int64 number of chosen response tokens scored.
        rejected_tokens: (N,) int64 number of rejected response tokens scored.
        chosen_shared: (N,) float32 summed log-prob of the chosen response's first
            min(chosen_tokens, rejected_tokens) tokens, or None when not scored (both or
            neither of the shared columns are set).
        rejected_shared: (N,) float32 likewise for the rejected response.
    """

    index: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    chosen_shared: torch.Tensor | None = None
    rejected_shared: torch.Tensor | None = None
    _order: torch.Tensor = field(init=False, repr=False, compare=False)
    _sorted_index: torch.Tensor = field(init=False, repr=False, compare=False)

    @property
    def has_shared(self) -> bool:
        """Whether the sums up to the shared length are held (:data:`SHARED_FIELDS`)."""
        return self.chosen_shared is not None

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the tensors held: :data:`FIELDS`, then :data:`SHARED_FIELDS` if set."""
        return FIELDS + SHARED_FIELDS if self.has_shared else FIELDS

    def __post_init__(self) -> None:
        if (self.chosen_shared is None) != (self.rejected_shared is None):
            raise ValueError("RefLogps needs both shared-length columns or neither")
        n = None
        for name in self.columns:
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"RefLogps.{name} must be a tensor, got {type(t).__name__}")
            if t.dtype != DTYPES[name]:
                raise ValueError(f"RefLogps.{name} must be {DTYPES[name]}, got {t.dtype}")
            if t.dim() != 1:
                raise ValueError(f"RefLogps.{name} must be 1-D, got shape {tuple(t.shape)}")
            n = t.shape[0] if n is None else n
            if t.shape[0] != n:
                raise ValueError(f"RefLogps.{name} has {t.shape[0]} rows, expected {n}")
        order = torch.argsort(self.index)
        sorted_index = self.index[order]
        if n and bool((sorted_index[1:] == sorted_index[:-1]).any()):
            raise ValueError("RefLogps.index has duplicate row indices")
        # Cached once: sorted positions make select() a binary search instead of a dict.
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_sorted_index", sorted_index)

    @classmethod
    def empty(cls, shared: bool = False) -> RefLogps:
        """No rows (with empty shared-length columns when ``shared``)."""
        ints, floats = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float32)
        extra = {name: floats.clone() for name in SHARED_FIELDS} if shared else {}
        return cls(ints, floats, floats.clone(), ints.clone(), ints.clone(), **extra)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def sorted(self) -> RefLogps:
        """The same rows in increasing row-index order (the order cache entries are stored in)."""
        return RefLogps(**{name: getattr(self, name)[self._order] for name in self.columns})

    def positions(self, index: torch.Tensor | Iterable[int]) -> torch.Tensor:
        """Positions (into the stored tensors) of the given data set row indices.

        Args:
            index: (B,) int64 data set row indices; repeats are allowed, each must be present.

        Returns:
            (B,) int64 positions ``p`` with ``self.index[p] == index``.

        Raises:
            ValueError: if some index has no stored row (the message lists a few of them).
        """
        return self._order[index_positions(self._sorted_index, index)]

    def select(self, index: torch.Tensor | Iterable[int]) -> RefLogps:
        """Rows with the given (distinct) data set indices, in that order.

        Args:
            index: (B,) int64 distinct data set row indices; each must be present.

        Returns:
            A :class:`RefLogps` with B rows.

        Raises:
            ValueError: if some index is missing or repeated.
        """
        rows = self.positions(index)
        return RefLogps(**{name: getattr(self, name)[rows] for name in self.columns})

    def values(
        self, average: bool = False, ld_alpha: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen and rejected log-probs, summed or averaged per response token.

        Args:
            average: if True, divide each sum by its token count (a response with 0 tokens,
                possible only after truncation, gets 0).
            ld_alpha: LD-DPO's α: each sum becomes ℓ_shared + α(ℓ − ℓ_shared) before the
                division (:func:`mrpo.logprobs.ld_logps`); None or 1: the sums as they are.

        Returns:
            ``(chosen, rejected)``, each (N,) float32.

        Raises:
            ValueError: LD-DPO is on and the shared-length columns were not scored.
        """
        if ld_active(ld_alpha) and not self.has_shared:
            raise ValueError(
                "ld_alpha needs the reference's log-probs up to the shared length; these were "
                "scored without them"
            )
        chosen = ld_logps(self.chosen, self.chosen_shared, ld_alpha)
        rejected = ld_logps(self.rejected, self.rejected_shared, ld_alpha)
        if not average:
            return chosen, rejected
        return (
            mean_per_token(chosen, self.chosen_tokens),
            mean_per_token(rejected, self.rejected_tokens),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors held by field name (contiguous CPU copies, for saving)."""
        return {name: getattr(self, name).detach().cpu().contiguous() for name in self.columns}
