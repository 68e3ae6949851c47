"""Log-probs up to a pair's shared length, and LD-DPO's length-desensitized log-prob.

LD-DPO (length desensitization of DPO, arXiv 2409.06411; TRL's ``DPOConfig.ld_alpha``)
splits each response of a preference pair at the pair's *shared length*
ℓ_s = min(|y_w|, |y_l|), counted in scored response tokens of the model that scores them: the
first ℓ_s tokens are the public part, the rest the response's own excess. The response's
log-prob becomes

    ℓ^LD(y) = ℓ_public(y) + α · (ℓ(y) − ℓ_public(y)),

where ℓ_public sums the token log-probs of the first ℓ_s scored tokens. α = 1 is ℓ itself.

The log-prob reductions (:mod:`mrpo.logprobs.sequence`, :mod:`mrpo.logprobs.packed_logprobs`)
sum the public part in the same pass as the total when given the shared lengths; the functions
here are the masks and the combination, pure and shape-documented. Pairs are laid out as
everywhere in mrpo: 2B sequences, the B chosen ones first, then the B rejected ones.
"""

from __future__ import annotations

import torch


def ld_active(alpha: float | None) -> bool:
    """Whether LD-DPO changes the log-probs: ``alpha`` is set and not 1 (1 and None: DPO's)."""
    return alpha is not None and alpha != 1.0


def pair_shared_tokens(num_tokens: torch.Tensor) -> torch.Tensor:
    """The shared length of each sequence's pair: (2B,) int64 token counts, chosen first ->
    (2B,) int64 min(|y_w|, |y_l|), the same for both sequences of a pair."""
    if num_tokens.dim() != 1 or num_tokens.shape[0] % 2:
        raise ValueError(
            f"num_tokens must be (2B,) counts, chosen first, got {tuple(num_tokens.shape)}"
        )
    chosen, rejected = num_tokens.chunk(2)
    shared = torch.minimum(chosen, rejected)
    return torch.cat([shared, shared])


def shared_prefix_mask(mask: torch.Tensor, shared_tokens: torch.Tensor) -> torch.Tensor:
    """The first ``shared_tokens[n]`` scored positions of each row.

    Args:
        mask: (N, T) bool, True on scored positions (in order along T).
        shared_tokens: (N,) int64 scored tokens of each row that count as shared.

    Returns:
        (N, T) bool, True on the scored positions whose rank in their row is below
        ``shared_tokens`` (TRL's ``1 <= cumsum(mask) <= shared_len``).
    """
    rank = mask.long().cumsum(dim=-1)  # 1 on the first scored position of a row
    return mask & (rank <= shared_tokens.to(rank.device).unsqueeze(-1))


def owner_ranks(owner: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Rank of each scored token among its sequence's tokens, in the order they are listed.

    Args:
        owner: (M,) int64 sequence in ``[0, S)`` of each scored token; a sequence's tokens are
            listed in their order in the sequence (as :func:`~mrpo.logprobs.pack_blocks` lists
            them), not necessarily next to each other.
        num_sequences: S.

    Returns:
        (M,) int64, 0 for each sequence's first scored token, 1 for its second, ...
    """
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=num_sequences)
    starts = counts.cumsum(0) - counts  # first sorted position of each sequence
    sorted_ranks = torch.arange(owner.shape[0], device=owner.device) - starts[owner[order]]
    return torch.empty_like(owner).scatter_(0, order, sorted_ranks)


def ld_logps(total: torch.Tensor, shared: torch.Tensor | None, alpha: float | None) -> torch.Tensor:
    """LD-DPO's log-prob ℓ_public + α(ℓ − ℓ_public), elementwise on tensors of any shape.

    Args:
        total: ℓ, the full response log-probs (summed, or divided by the full token count).
        shared: ℓ_public, reduced the same way; may be None when LD-DPO is off.
        alpha: α in [0, 1]; None or 1 returns ``total`` itself (the same tensor, bit for bit).

    Raises:
        ValueError: LD-DPO is on and ``shared`` is None.
    """
    if not ld_active(alpha):
        return total
    if shared is None:
        raise ValueError("ld_alpha needs the log-probs up to the shared length (shared=None)")
    assert alpha is not None
    return shared + alpha * (total - shared)
