"""Typed records shared by the data pipeline, the references and the training module.

Shapes use B = number of preference pairs in a batch, T = padded sequence length,
K = number of reference models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from mrpo.logprobs import IGNORE_INDEX, PackedRows

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

RefLookup = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Maps a batch's (B,) int64 row index to its cached reference log-probs
``(ref_chosen (K, B), ref_rejected (K, B))``; :class:`mrpo.references.RefTable` is one."""


@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair, normalized from any source format.

    Attributes:
        prompt: chat messages before the response; the last one is a ``user`` turn.
        chosen: the preferred assistant response (plain text, non-empty).
        rejected: the dispreferred assistant response (plain text, non-empty, != chosen).
        index: row number of the pair in its data set (stable key for the reference cache).
    """

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    index: int


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair tokenized by one tokenizer and chat template.

    ``prompt_ids`` is the rendered prompt (chat template with the generation prompt); the
    response id lists hold the response tokens only (ending with the end-of-turn token). A
    full sequence is ``prompt_ids + chosen_ids`` (resp. ``rejected_ids``).
    """

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    index: int
    truncated: bool = False


@dataclass
class PreferenceBatch:
    """A batch of B preference pairs: padded rows, chosen rows first, or packed rows.

    Attributes:
        input_ids: (2B, T) int64; rows ``[0, B)`` are prompt+chosen, rows ``[B, 2B)`` are
            prompt+rejected, in the same pair order. With ``packed``: its (R, T) rows.
        attention_mask: (2B, T) int64, 1 on real tokens, 0 on padding (with ``packed``: its
            rows').
        labels: (2B, T) int64, equal to ``input_ids`` on response tokens and -100 on prompt
            and padding tokens (unshifted: position t is predicted from positions < t). With
            ``packed``: (R, T), the response tokens at their own positions; the scored tokens
            and what predicts them are ``packed``'s.
        index: (B,) int64 data set row of each pair.
        ref_chosen: (K, B) float32 reference log-probs of the chosen responses, or None when
            the references run live.
        ref_rejected: (K, B) float32, likewise for the rejected responses.
        packed: the pairs as packed rows (:mod:`mrpo.data.layout`), sequence ``b`` the chosen
            and ``B + b`` the rejected response of pair ``b``; None in the padded layout.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    packed: PackedRows | None = None

    @property
    def num_pairs(self) -> int:
        """B, the number of preference pairs."""
        return int(self.index.shape[0])

    def response_token_counts(self) -> torch.Tensor:
        """(2B,) int64 scored response tokens of each sequence, chosen ones first.

        In the padded layout the first position of a row is never predicted, so it is not
        counted (as in :func:`mrpo.logprobs.sequence_logprobs`).
        """
        if self.packed is not None:
            return self.packed.token_counts()
        return (self.labels[:, 1:] != IGNORE_INDEX).sum(dim=-1)

    def to(self, device: torch.device | str) -> PreferenceBatch:
        """Return a copy with every tensor moved to ``device``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        def move_optional(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else move(t)

        return replace(
            self,
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            labels=move(self.labels),
            index=move(self.index),
            ref_chosen=move_optional(self.ref_chosen),
            ref_rejected=move_optional(self.ref_rejected),
            extras={k: v.to(device, non_blocking=True) for k, v in self.extras.items()},
            packed=None if self.packed is None else self.packed.to(device),
        )
