"""Rows that hold several scored sequences: shared prefixes and padding-free packing.

The padded layout of :mod:`mrpo.logprobs.sequence` gives every scored sequence a row of its
own. :class:`PackedRows` lays sequences out differently, and :func:`pack_blocks` builds it:

- A **block** is a run of *shared* tokens (a prompt, never scored) followed by one or more
  *branches* (responses, scored), each branch a sequence of its own: the tokens of a branch
  attend to the shared tokens and to the earlier tokens of their own branch, never to another
  branch, and their positions continue from the end of the shared tokens. A preference pair
  ``prompt, chosen, rejected`` is one block with two branches, so the prompt is computed once
  and both responses see exactly what they would see alone.
- Blocks are **packed** into rows one after the other; a token attends only within its block
  and positions restart at 0 in each block, so several blocks share a row without padding
  between them. Rows are padded at their end only.

Scoring follows the same convention as the padded layout (the hidden state before a token
predicts it), except that the first token of a branch is predicted by the last *shared*
token, which is not the position right before it in the row. So the scored tokens are given
explicitly: ``predictor`` (where the predicting hidden state is), ``targets`` (the token) and
``owner`` (which sequence it counts for).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch

PAD_SEGMENT = -1
"""``segment`` value of padding positions."""


@dataclass(frozen=True)
class Block:
    """Shared (unscored) tokens, then branches that each continue them as their own sequence.

    Attributes:
        shared: token ids every branch attends to (a prompt); may be empty.
        branches: ``(token ids, sequence id)`` of each branch; the ids are scored and count
            for sequence ``sequence id`` of the :class:`PackedRows`.
    """

    shared: tuple[int, ...]
    branches: tuple[tuple[tuple[int, ...], int], ...]

    @property
    def num_tokens(self) -> int:
        """Tokens of the block: shared ones and every branch's."""
        return len(self.shared) + sum(len(ids) for ids, _ in self.branches)


@dataclass(frozen=True)
class PackedRows:
    """S scored sequences laid out in R rows of T positions (module doc).

    Attributes:
        input_ids: (R, T) int64 token ids (``pad_token_id`` on padding).
        position_ids: (R, T) int64 position of each token in its own sequence (0 on padding).
        segment: (R, T) int64 block number of each token within its row, ``PAD_SEGMENT`` (-1)
            on padding: a token attends only to tokens of its own block.
        branch: (R, T) int64, 0 on a block's shared tokens, ``1 + i`` on the tokens of its
            ``i``-th branch: a token attends to shared tokens and to its own branch.
        predictor: (M,) int64 flat index ``r * T + t`` of the hidden state that predicts each
            scored token.
        targets: (M,) int64 the scored token ids.
        owner: (M,) int64 the sequence in ``[0, S)`` each scored token counts for.
        num_sequences: S.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    branch: torch.Tensor
    predictor: torch.Tensor
    targets: torch.Tensor
    owner: torch.Tensor
    num_sequences: int

    @property
    def attention_mask(self) -> torch.Tensor:
        """(R, T) int64, 1 on real tokens and 0 on padding."""
        return (self.segment != PAD_SEGMENT).long()

    def token_counts(self) -> torch.Tensor:
        """(S,) int64 number of scored tokens of each sequence."""
        return torch.bincount(self.owner, minlength=self.num_sequences)

    def to(self, device: torch.device | str) -> PackedRows:
        """A copy with every tensor on ``device``."""
        tensors = [f.name for f in fields(self) if f.name != "num_sequences"]
        return replace(
            self, **{name: getattr(self, name).to(device, non_blocking=True) for name in tensors}
        )


def assign_rows(lengths: Sequence[int], capacity: int | None) -> list[list[int]]:
    """Group blocks into rows, first-fit decreasing: few rows, none wider than needed.

    Args:
        lengths: tokens of each block.
        capacity: the most tokens of a row; a longer block gets a row of its own. None: one
            block per row, in input order (no packing).

    Returns:
        The block numbers of each row; each row lists its blocks in decreasing length, the
        rows in order of their longest block.
    """
    if capacity is None:
        return [[i] for i in range(len(lengths))]
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1 token or None, got {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fit = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if fit is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return rows


def pack_blocks(
    blocks: Sequence[Block],
    num_sequences: int,
    *,
    pad_token_id: int,
    row_tokens: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> PackedRows:
    """Lay ``blocks`` out in rows (:func:`assign_rows`) and list the scored tokens.

    A branch token is scored when something predicts it: every branch token has a predictor
    except the first token of a branch whose block has no shared tokens (as the first token
    of a padded row is never scored).

    Args:
        blocks: the blocks; their branches' sequence ids must lie in ``[0, num_sequences)``.
        num_sequences: S, the number of scored sequences.
        pad_token_id: id written on padding.
        row_tokens: the most tokens of a row (None: one block per row).
        pad_to_multiple_of: round the row width T up to a multiple of this.

    Returns:
        The :class:`PackedRows`.
    """
    if not blocks:
        raise ValueError("cannot pack an empty list of blocks")
    rows = assign_rows([b.num_tokens for b in blocks], row_tokens)
    width = max(sum(blocks[i].num_tokens for i in row) for row in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    layout = _Layout()
    for r, row in enumerate(rows):
        layout.add_row([blocks[i] for i in row], r * width, width, num_sequences, pad_token_id)

    def tensor(values: list[int], *dims: int) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).view(*dims)

    shape = (len(rows), width)
    return PackedRows(
        input_ids=tensor(layout.ids, *shape),
        position_ids=tensor(layout.positions, *shape),
        segment=tensor(layout.segment, *shape),
        branch=tensor(layout.branch, *shape),
        predictor=tensor(layout.predictor, -1),
        targets=tensor(layout.targets, -1),
        owner=tensor(layout.owner, -1),
        num_sequences=num_sequences,
    )


@dataclass
class _Layout:
    """The flat lists :func:`pack_blocks` fills, row after row."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segment: list[int] = field(default_factory=list)
    branch: list[int] = field(default_factory=list)
    predictor: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)

    def add_row(
        self, blocks: Sequence[Block], start: int, width: int, num_sequences: int, pad_id: int
    ) -> None:
        """Append one row of ``width`` positions (flat index ``start`` on) holding ``blocks``."""
        for s, block in enumerate(blocks):
            n_shared = len(block.shared)
            last_shared = len(self.ids) + n_shared - 1  # flat index, as ``start + offset``
            self.ids += block.shared
            self.positions += range(n_shared)
            self.branch += [0] * n_shared
            for b, (branch_ids, sequence) in enumerate(block.branches):
                if not 0 <= sequence < num_sequences:
                    raise ValueError(f"sequence id {sequence} is not in [0, {num_sequences})")
                first, n = len(self.ids), len(branch_ids)
                # The last shared token predicts the branch's first token (nothing does when
                # there are no shared tokens: it is not scored, as the first position of a
                # padded row), then each branch token predicts the next one.
                if n_shared and n:
                    self.predictor.append(last_shared)
                self.predictor += range(first, first + n - 1)
                self.targets += branch_ids if n_shared else branch_ids[1:]
                self.owner += [sequence] * (n if n_shared else max(n - 1, 0))
                self.ids += branch_ids
                self.positions += range(n_shared, n_shared + n)
                self.branch += [1 + b] * n
            self.segment += [s] * block.num_tokens
        pad = start + width - len(self.ids)
        self.ids += [pad_id] * pad
        self.positions += [0] * pad
        self.segment += [PAD_SEGMENT] * pad
        self.branch += [0] * pad
