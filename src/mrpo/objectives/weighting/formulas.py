"""Reference weights α as pure functions: ARWC, validation-based weights, validation of weights.

Shapes: K references, B preference pairs in a batch, N pairs in a validation split. Reference
log-probs are laid out (K, B) (or (K, N)) with row 0 the primary reference; weights are
(B, K) per example or (K,) per run. Every function returns α >= 0 with rows summing to 1.
Weights are computed from frozen reference log-probs only, so they never carry a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mrpo.errors import OptionError

ARWC_EPS = 1e-6
"""The ε of the ARWC denominator Σ_j |Δ_j| + ε (the paper's and the authors' code's value)."""


def reference_margins(ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
    """Each reference's own margin Δ_k = ℓ_k(y_w) − ℓ_k(y_l).

    Args:
        ref_chosen: (K, B) reference log-probs of the chosen responses.
        ref_rejected: (K, B) likewise for the rejected responses.

    Returns:
        (B, K) detached margins.
    """
    return (ref_chosen.detach() - ref_rejected.detach()).transpose(0, 1)


def arwc_weights(
    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, eps: float = ARWC_EPS
) -> torch.Tensor:
    """Adaptive reference weighting coefficients (ARWC), per example, from unclipped log-probs.

    α_k = |Δ_k| / (Σ_j |Δ_j| + ε) for references k >= 2 (the paper's formula); the primary
    reference gets the remainder α_1 = (|Δ_1| + ε) / (Σ_j |Δ_j| + ε) = 1 − Σ_{k>=2} α_k. For K = 2
    this is exactly the authors' code (α for reference 2, 1 − α for reference 1). The remainder
    makes every row sum to 1 and settles the 0/0 case: when all margins are 0, no reference
    discriminates and all weight goes to the primary reference (plain DPO against it).

    Args:
        ref_chosen: (K, B) reference log-probs of the chosen responses, row 0 the primary.
        ref_rejected: (K, B) likewise for the rejected responses.
        eps: ε > 0 of the denominator.

    Returns:
        (B, K) weights, non-negative, rows summing to 1.
    """
    abs_margins = reference_margins(ref_chosen, ref_rejected).abs()  # (B, K)
    denominator = abs_margins.sum(dim=1, keepdim=True) + eps
    primary = (abs_margins[:, :1] + eps) / denominator
    return torch.cat([primary, abs_margins[:, 1:] / denominator], dim=1)


def one_hot_argmax(weights: torch.Tensor) -> torch.Tensor:
    """All weight on the largest entry of each weight row (ties: the lowest index).

    Args:
        weights: (K,) or (B, K) weights.

    Returns:
        Weights of the same shape and dtype with a single 1 per row, at its argmax.
    """
    # torch.argmax returns the first maximal index, so ties go to the lowest reference index.
    index = weights.argmax(dim=-1, keepdim=True)
    return torch.zeros_like(weights).scatter_(-1, index, 1.0)


def mean_token_margins(
    val_chosen: torch.Tensor,
    val_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """Length-normalized margins Δ̄_k = ℓ_k(y_w)/n_k(y_w) − ℓ_k(y_l)/n_k(y_l) on a validation split.

    Token counts are per reference because each reference tokenizes the text itself.

    Args:
        val_chosen: (K, N) summed reference log-probs of the chosen responses.
        val_rejected: (K, N) likewise for the rejected responses.
        chosen_tokens: (K, N) number of response tokens of each chosen response (> 0).
        rejected_tokens: (K, N) likewise for the rejected responses.

    Returns:
        (K, N) float margins (float64 for float64 input, float32 otherwise).

    Raises:
        ValueError: naming the argument, on a shape mismatch, N = 0, or a token count <= 0.
    """
    named = {
        "val_chosen": val_chosen,
        "val_rejected": val_rejected,
        "chosen_tokens": chosen_tokens,
        "rejected_tokens": rejected_tokens,
    }
    for name, tensor in named.items():
        if tensor.dim() != 2 or tensor.shape != val_chosen.shape:
            raise ValueError(
                f"{name} must have shape (K, N) equal to val_chosen's {tuple(val_chosen.shape)}, "
                f"got {tuple(tensor.shape)}"
            )
    if val_chosen.shape[1] == 0:
        raise ValueError("val_chosen has no validation pairs (N = 0)")
    for name in ("chosen_tokens", "rejected_tokens"):
        if bool((named[name] <= 0).any()):
            raise ValueError(f"{name} must be > 0 everywhere (a response with no tokens)")
    dtype = torch.float64 if val_chosen.dtype == torch.float64 else torch.float32
    chosen = val_chosen.detach().to(dtype) / chosen_tokens.to(dtype)
    rejected = val_rejected.detach().to(dtype) / rejected_tokens.to(dtype)
    return chosen - rejected


def normalize_scores(scores: torch.Tensor) -> torch.Tensor:
    """Normalize non-negative scores (K,) to weights; all-zero scores give uniform weights."""
    total = scores.sum()
    if float(total) <= 0.0:
        return torch.full_like(scores, 1.0 / scores.numel())
    return scores / total


def vdw_weights(
    val_chosen: torch.Tensor,
    val_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """Validation-set discrimination weighting (VDW; Wu & Echarghaoui, arXiv 2512.10040).

    α_k ∝ Σ_n |Δ̄_k,n|, the total length-normalized margin of reference k over a held-out split
    (ARWC's confidence signal, aggregated on data the loss never sees, so no label leakage).
    All-zero margins give uniform weights. Arguments as in :func:`mean_token_margins`.

    Returns:
        (K,) weights, non-negative, summing to 1.
    """
    margins = mean_token_margins(val_chosen, val_rejected, chosen_tokens, rejected_tokens)
    return normalize_scores(margins.abs().sum(dim=1))


def vaw_weights(
    val_chosen: torch.Tensor,
    val_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """Validation-set accuracy weighting (VAW; Wu & Echarghaoui, arXiv 2512.10040).

    α_k ∝ mean_n 1[Δ̄_k,n > 0], reference k's own preference accuracy on a held-out split (ties
    count as wrong). All-zero accuracies give uniform weights. Arguments as in
    :func:`mean_token_margins`.

    Returns:
        (K,) weights, non-negative, summing to 1.
    """
    margins = mean_token_margins(val_chosen, val_rejected, chosen_tokens, rejected_tokens)
    return normalize_scores((margins > 0).to(margins.dtype).mean(dim=1))


def check_fixed_weights(values: Sequence[float] | torch.Tensor, option: str) -> list[float]:
    """Validate a fixed weight list: finite, non-negative, not all zero; return it as floats.

    Raises:
        OptionError: naming ``option``.
    """
    try:
        tensor = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise OptionError(
            option, f"option {option!r} must be a list of numbers, got {values!r}"
        ) from error
    if tensor.dim() != 1:
        raise OptionError(
            option, f"option {option!r} must be a flat list of numbers, got {values!r}"
        )
    floats = [float(v) for v in tensor]
    if not floats:
        raise OptionError(option, f"option {option!r} must not be empty")
    if not all(math.isfinite(v) for v in floats):
        raise OptionError(option, f"option {option!r} must be finite, got {floats}")
    if any(v < 0 for v in floats):
        raise OptionError(option, f"option {option!r} must be non-negative, got {floats}")
    if sum(floats) <= 0:
        raise OptionError(option, f"option {option!r} must not be all zero, got {floats}")
    return floats


def expand_weights(
    weights: torch.Tensor | Sequence[float], num_refs: int, batch_size: int, like: torch.Tensor
) -> torch.Tensor:
    """Validate explicit weights, (K,) or (B, K), and return normalized (B, K) weights.

    Rows are normalized to sum to 1. This runs data-dependent checks (a device sync on a GPU);
    strategies produce valid weights by construction and skip it.

    Args:
        weights: (K,) shared weights or (B, K) per-example weights.
        num_refs: K.
        batch_size: B.
        like: tensor whose dtype and device the result takes.

    Raises:
        ValueError: naming ``weights``, for a wrong shape, a negative or non-finite entry, or an
            all-zero row.
    """
    w = torch.as_tensor(weights).detach().to(dtype=like.dtype, device=like.device)
    if w.shape == (num_refs,):
        w = w.expand(batch_size, num_refs)
    if w.shape != (batch_size, num_refs):
        raise ValueError(
            f"weights must have shape (K,)=({num_refs},) or (B, K)=({batch_size}, {num_refs}), "
            f"got {tuple(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weights must be finite")
    if bool((w < 0).any()):
        raise ValueError("weights must be non-negative")
    totals = w.sum(dim=1, keepdim=True)
    if bool((totals <= 0).any()):
        raise ValueError("weights must not have an all-zero row (no reference to use)")
    return w / totals
