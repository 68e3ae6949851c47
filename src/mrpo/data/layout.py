"""How the pairs of a batch become rows: padded, prompt shared, packed.

The padded layout (:class:`~mrpo.data.collate.PreferenceCollator` without a layout) gives each
of the 2B sequences ``prompt + chosen`` and ``prompt + rejected`` a row, padded to the longest.
A :class:`PairLayout` lays them out as :class:`~mrpo.logprobs.packed_rows.PackedRows` instead:

- ``share_prefix``: one block per pair, ``prompt, chosen, rejected``, the rejected tokens
  attending to the prompt and to themselves (not to the chosen ones) at positions continuing
  from the prompt's end: the prompt is computed once per pair instead of twice;
- ``pack``: the blocks (a pair's, or each sequence's own without ``share_prefix``) packed into
  rows first-fit decreasing, so that padding is left at the end of a few rows only. A row holds
  at most ``row_tokens`` tokens, by default the longest block of the batch: packing then never
  makes a row wider than the widest block, which matters where attention costs the square of a
  row's width (dense masks on CPUs).

Sequence ``b`` of the rows is pair ``b``'s chosen response and ``B + b`` its rejected one, as
the rows of the padded layout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mrpo.data.table import id_lengths
from mrpo.data.types import TokenizedPair
from mrpo.logprobs import Block, PackedRows, pack_blocks, packed_mask_builder

log = logging.getLogger("mrpo.data")


@dataclass(frozen=True)
class PairLayout:
    """A layout of a batch's pairs (module doc); both flags off is the padded layout.

    Attributes:
        share_prefix: one block ``prompt, chosen, rejected`` per pair.
        pack: several blocks per row, padding at row ends only.
        row_tokens: with ``pack``, the most tokens of a row (None: the batch's longest block).
    """

    share_prefix: bool = False
    pack: bool = False
    row_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.row_tokens is not None and self.row_tokens < 1:
            raise ValueError(f"row_tokens must be >= 1 or None, got {self.row_tokens}")

    @property
    def padded(self) -> bool:
        """Whether this is the padded layout (one row per sequence)."""
        return not (self.share_prefix or self.pack)


PADDED = PairLayout()
"""The padded layout: one row per sequence, chosen rows first."""


def pair_blocks(pairs: Sequence[TokenizedPair], share_prefix: bool) -> list[Block]:
    """The blocks of B pairs: one per pair with ``share_prefix``, else one per sequence."""
    b = len(pairs)
    if share_prefix:
        return [
            Block(p.prompt_ids, ((p.chosen_ids, i), (p.rejected_ids, b + i)))
            for i, p in enumerate(pairs)
        ]
    return [Block(p.prompt_ids, ((p.chosen_ids, i),)) for i, p in enumerate(pairs)] + [
        Block(p.prompt_ids, ((p.rejected_ids, b + i),)) for i, p in enumerate(pairs)
    ]


def pack_pairs(
    pairs: Sequence[TokenizedPair],
    layout: PairLayout,
    *,
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> PackedRows:
    """B pairs as :class:`PackedRows` of 2B sequences (chosen ``[0, B)``, rejected ``[B, 2B)``)."""
    blocks = pair_blocks(pairs, layout.share_prefix)
    capacity = None
    if layout.pack:
        capacity = layout.row_tokens or max(block.num_tokens for block in blocks)
    return pack_blocks(
        blocks,
        2 * len(pairs),
        pad_token_id=pad_token_id,
        row_tokens=capacity,
        pad_to_multiple_of=pad_to_multiple_of,
    )


def pair_costs(pairs: Sequence[TokenizedPair], layout: PairLayout) -> list[int]:
    """Tokens each pair costs in ``layout``: its blocks' lengths in a packed layout, two rows
    of prompt + the longer response in the padded one (what a token budget counts)."""
    prompt, chosen, rejected = id_lengths(pairs)
    if layout.padded:
        return (2 * (prompt + np.maximum(chosen, rejected))).tolist()
    prompts = 1 if layout.share_prefix else 2
    return (prompts * prompt + chosen + rejected).tolist()


def layout_for(model: torch.nn.Module, layout: PairLayout) -> PairLayout:
    """``layout`` if ``model`` can take packed rows (:func:`mrpo.logprobs.packed_mask_builder`),
    else the padded layout: the fallback of families outside the allow-list."""
    if layout.padded or packed_mask_builder(model) is not None:
        return layout
    log.info(
        "%s cannot take packed rows (mrpo.logprobs.attention allow-list): padded layout",
        type(model).__name__,
    )
    return PADDED
