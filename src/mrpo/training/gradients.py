"""The gradient norm before clipping, measured once and reused by norm clipping."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def clip_and_measure(parameters: Iterable[torch.Tensor], max_norm: float | None) -> float:
    """The total 2-norm of the parameters' gradients; then clip them to ``max_norm`` in place.

    The clipping is ``torch.nn.utils.clip_grad_norm_``'s (gradients scaled by
    ``min(1, max_norm / (norm + 1e-6))``), with its norm computed once: the caller logs it.

    Args:
        parameters: the optimizer's parameters (those without a gradient are skipped).
        max_norm: the largest norm allowed after clipping; None or 0: measure only.

    Returns:
        The norm before clipping (0.0 when no parameter has a gradient).
    """
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad if p.grad is not None])
    if max_norm:
        torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, norm)
    return float(norm)
