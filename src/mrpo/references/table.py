"""``RefTable``: K references' cached log-probs on N rows, looked up by batch row index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mrpo.references.logps import RefLogps, index_positions


@dataclass(frozen=True, eq=False)
class RefTable:
    """Reference log-probs of K references on N rows, ready for batch lookup.

    Each reference's ``length_normalize`` setting (and LD-DPO's ``ld_alpha``) is already
    applied. An instance is the
    ``ref_lookup`` of :class:`mrpo.data.collate.PreferenceCollator` (it is callable and
    picklable, so it also works in DataLoader worker processes).

    Attributes:
        index: (N,) int64 data set row indices, increasing.
        chosen: (K, N) float32 ℓ_k(y_w) of each row.
        rejected: (K, N) float32 ℓ_k(y_l) of each row.
        names: the K reference names.
    """

    index: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    names: tuple[str, ...]

    @classmethod
    def from_logps(
        cls,
        logps: Sequence[RefLogps],
        *,
        length_normalize: Sequence[bool],
        names: Sequence[str],
        ld_alpha: float | None = None,
    ) -> RefTable:
        """Stack K references' log-probs on the same rows.

        Args:
            logps: K :class:`RefLogps` covering the same row indices (in any order).
            length_normalize: per reference, whether to use per-token means instead of sums.
            names: the K reference names.
            ld_alpha: LD-DPO's α, applied to every reference (:meth:`RefLogps.values`).

        Raises:
            ValueError: K = 0, the argument lengths differ, the references' rows differ, or
                ``ld_alpha`` is on and a reference lacks its shared-length sums.
        """
        if not logps or not len(logps) == len(length_normalize) == len(names):
            raise ValueError(
                f"need K >= 1 references with one length_normalize flag and one name each; got "
                f"{len(logps)} log-prob sets, {len(length_normalize)} flags, {len(names)} names"
            )
        index = torch.sort(logps[0].index).values
        chosen, rejected = [], []
        for name, ref, average in zip(names, logps, length_normalize, strict=True):
            if len(ref) != len(index):
                raise ValueError(f"reference {name!r} has {len(ref)} rows, expected {len(index)}")
            try:
                rows = ref.positions(index)
            except ValueError as err:
                raise ValueError(f"reference {name!r} covers other rows: {err}") from None
            try:
                c, r = ref.values(average=average, ld_alpha=ld_alpha)
            except ValueError as err:
                raise ValueError(f"reference {name!r}: {err}") from None
            chosen.append(c[rows])
            rejected.append(r[rows])
        return cls(index, torch.stack(chosen), torch.stack(rejected), tuple(names))

    @property
    def num_refs(self) -> int:
        """K, the number of references."""
        return int(self.chosen.shape[0])

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of a batch's rows.

        Args:
            index: (B,) int64 data set row indices (e.g. ``PreferenceBatch.index``).

        Returns:
            ``(ref_chosen, ref_rejected)``, each (K, B) float32 on the CPU.

        Raises:
            ValueError: some row is not in the table.
        """
        pos = index_positions(self.index, index)
        return self.chosen[:, pos], self.rejected[:, pos]

    __call__ = lookup
