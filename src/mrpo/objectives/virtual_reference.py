"""Reference-side math of MRPO: CTRO clipping and the harmonic virtual reference.

All functions are pure and operate on detached reference log-probs: references are frozen,
so nothing here carries a gradient. Shapes: K references, B preference pairs; reference
log-probs are laid out (K, B) with row 0 the primary reference π_1, weights (B, K).

Behaviour checked against the authors' implementation (github.com/thaihungle/MRPO,
``src/llmtuner/train/dpo/trainer_mref.py``, K = 2), where the primary reference is the
policy's initial weights and the second reference is an external model:

- CTRO clips the second reference's log-probs into ``[(1+ε)ℓ_1, (1−ε)ℓ_1]`` separately for the
  chosen and the rejected response; the adaptive ε uses the unclipped means over both
  references, s = |b_w| / (|b_w| + |b_l|), ε_w = ε·s, ε_l = ε·(1−s); a negative ``eta`` there
  selects the fixed mode ε_w = ε_l = |eta|. Reference 1 itself is never clipped.
- The virtual reference is computed as ``ℓ_1 + ℓ̃_2 − log(α e^{ℓ̃_2} + (1−α) e^{ℓ_1})`` with α
  the ARWC weight of reference 2, i.e. log π̂ = −log(α/π_1 + (1−α)/π_2): the weight the
  general formula gives reference 2 multiplies 1/π_1. :func:`pair_weights` reproduces it.
"""

from __future__ import annotations

import torch

from mrpo.errors import OptionError


def adaptive_epsilons(
    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, epsilon: float, adaptive: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example CTRO band widths (ε_w, ε_l).

    Adaptive mode: b_w = mean_k ℓ_k(y_w), b_l = mean_k ℓ_k(y_l) over the unclipped references,
    s = |b_w| / (|b_w| + |b_l|), ε_w = ε·s, ε_l = ε·(1−s). The response with the larger mean
    |log-prob| (usually the longer one) gets the wider band. When b_w = b_l = 0 the ratio is 0/0
    and s = 1/2 is used (an even split). Fixed mode: ε_w = ε_l = ε.

    Args:
        ref_chosen: (K, B) reference log-probs of the chosen responses.
        ref_rejected: (K, B) likewise for the rejected responses.
        epsilon: ε >= 0.
        adaptive: adaptive (True) or fixed (False) mode.

    Returns:
        Two (B,) tensors (ε_w, ε_l) in the dtype of ``ref_chosen``.
    """
    batch = ref_chosen.shape[1]
    if not adaptive:
        eps = ref_chosen.new_full((batch,), float(epsilon))
        return eps, eps.clone()
    b_w = ref_chosen.mean(dim=0).abs()
    b_l = ref_rejected.mean(dim=0).abs()
    total = b_w + b_l
    # 0/0 (both means exactly 0) -> even split instead of NaN.
    s = torch.where(total > 0, b_w / total.clamp_min(torch.finfo(total.dtype).tiny), 0.5)
    return epsilon * s, epsilon * (1.0 - s)


def ctro_clip(
    ref_logps: torch.Tensor, epsilon: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip references k >= 2 into the trust region around reference 1 (one response side).

    ℓ̃_k = clip(ℓ_k, (1+ε)ℓ_1, (1−ε)ℓ_1) for k >= 2, ℓ̃_1 = ℓ_1. Log-probs are negative, so
    (1+ε)ℓ_1 is normally the lower bound; the bounds are ordered with min/max so the band stays
    valid when ℓ_1 > 0 (e.g. after a mean normalization) and collapses to {0} when ℓ_1 = 0.

    Args:
        ref_logps: (K, B) reference log-probs of one response side, row 0 the primary.
        epsilon: ε_y as a float or a (B,) tensor (per-example band, see :func:`adaptive_epsilons`).

    Returns:
        ``(clipped, moved)``: clipped (K, B) log-probs and a (K−1, B) bool mask of the entries of
        references k >= 2 that lay strictly outside their band.
    """
    primary = ref_logps[:1]  # (1, B)
    others = ref_logps[1:]  # (K-1, B)
    eps = torch.as_tensor(epsilon, dtype=ref_logps.dtype, device=ref_logps.device)
    a, b = (1.0 + eps) * primary, (1.0 - eps) * primary
    low, high = torch.minimum(a, b), torch.maximum(a, b)
    moved = (others < low) | (others > high)
    clipped = torch.minimum(torch.maximum(others, low), high)
    return torch.cat([primary, clipped], dim=0), moved


def apply_ctro(
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    epsilon: float,
    adaptive: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CTRO on both response sides, with the (adaptive or fixed) band widths.

    Args:
        ref_chosen: (K, B) reference log-probs of the chosen responses, row 0 the primary.
        ref_rejected: (K, B) likewise for the rejected responses.
        epsilon: ε in [0, 1].
        adaptive: split ε by :func:`adaptive_epsilons` (True) or use it on both sides (False).

    Returns:
        ``(clipped_chosen, clipped_rejected, clip_fraction)``: two (K, B) tensors and a scalar
        tensor, the fraction of the 2·(K−1)·B entries of references k >= 2 that were moved
        (0 when K = 1).
    """
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    eps_w, eps_l = adaptive_epsilons(ref_chosen, ref_rejected, epsilon, adaptive)
    clipped_chosen, moved_chosen = ctro_clip(ref_chosen, eps_w)
    clipped_rejected, moved_rejected = ctro_clip(ref_rejected, eps_l)
    moved = torch.cat([moved_chosen, moved_rejected])
    fraction = moved.to(ref_chosen.dtype).mean() if moved.numel() else ref_chosen.new_zeros(())
    return clipped_chosen, clipped_rejected, fraction


def harmonic_reference(ref_logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Log-prob of the weighted harmonic-mean virtual reference.

    log π̂(y) = −log Σ_k α_k / π_k(y) = −logsumexp_k(log α_k − ℓ_k(y)), computed with
    logsumexp so log-probs of −1e4 stay finite. A zero weight contributes log 0 = −inf, which
    logsumexp ignores; every row of ``weights`` must have at least one positive entry.
    By Jensen, log π̂ <= Σ_k α_k ℓ_k (:func:`geometric_reference`).

    Args:
        ref_logps: (K, B) reference log-probs (clipped or not) of one response side.
        weights: (B, K) non-negative weights, rows summing to 1.

    Returns:
        (B,) log π̂(y).
    """
    log_weights = torch.log(weights.detach().transpose(0, 1))  # (K, B); log 0 = -inf is fine
    return -torch.logsumexp(log_weights - ref_logps.detach(), dim=0)


def geometric_reference(ref_logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """α-weighted mean of the reference log-probs, Σ_k α_k ℓ_k(y) (weighted geometric mean).

    Args:
        ref_logps: (K, B) reference log-probs of one response side.
        weights: (B, K) non-negative weights, rows summing to 1.

    Returns:
        (B,) Σ_k α_k ℓ_k(y).
    """
    return (weights.detach().transpose(0, 1) * ref_logps.detach()).sum(dim=0)


def arithmetic_reference(ref_logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Log-prob of the α-weighted mixture of the references, log Σ_k α_k π_k(y).

    Computed as logsumexp_k(log α_k + ℓ_k(y)); a zero weight contributes log 0 = −inf, which
    logsumexp ignores. By Jensen it is >= :func:`geometric_reference`.

    Args:
        ref_logps: (K, B) reference log-probs of one response side.
        weights: (B, K) non-negative weights, rows summing to 1.

    Returns:
        (B,) log Σ_k α_k π_k(y).
    """
    log_weights = torch.log(weights.detach().transpose(0, 1))
    return torch.logsumexp(log_weights + ref_logps.detach(), dim=0)


def pair_weights(weights: torch.Tensor, pairing: str) -> torch.Tensor:
    """Weights that multiply 1/π_k in the harmonic mean, for a pairing mode.

    ``"general"`` returns ``weights`` unchanged (α_k pairs with π_k). ``"official"`` (K = 2 only)
    reproduces the authors' code: the weight the strategy gives reference 2 multiplies 1/π_1 and
    vice versa, log π̂ = −log(α_2/π_1 + α_1/π_2). With α_1 = α_2 = 1/2 both agree.

    Args:
        weights: (B, K) weights from a strategy.
        pairing: ``"general"`` or ``"official"``.

    Returns:
        (B, K) weights to pass to :func:`harmonic_reference`.

    Raises:
        ValueError: for an unknown pairing, or ``"official"`` with K != 2.
    """
    if pairing == "general":
        return weights
    if pairing == "official":
        if weights.shape[-1] != 2:
            raise OptionError(
                "harmonic_pairing",
                "option 'harmonic_pairing'='official' needs exactly K=2 references, "
                f"got K={weights.shape[-1]}",
            )
        return weights.flip(-1)
    raise OptionError("harmonic_pairing", f"unknown option 'harmonic_pairing'={pairing!r}")
