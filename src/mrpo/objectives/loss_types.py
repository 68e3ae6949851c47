"""The DPO-family losses of the logits z, one registry keyed by ``loss_type``.

With z = (ℓθ(y_w) − ℓθ(y_l)) − (ℓ_r(y_w) − ℓ_r(y_l)) and h = βz, the per-example losses are
(identical to TRL's ``DPOTrainer`` for these loss types):

- ``sigmoid``: −(1−ε_ls)·log σ(h) − ε_ls·log σ(−h)   (DPO, Rafailov et al. 2023; cDPO smoothing)
- ``ipo``:     (z − 1/(2β))² = (h/β − 1/(2β))²       (IPO, Azar et al. 2023, Eq. 17)
- ``hinge``:   max(0, 1 − h)                          (RSO / SLiC hinge)

Adding a loss type: a function ``(logits, beta, label_smoothing) -> losses`` and its entry in
:data:`LOSS_TYPES`; ``loss.loss_type=<name>`` then selects it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F

LossFunction = Callable[[torch.Tensor, float, float], torch.Tensor]
"""(logits z of any shape, β, label smoothing ε_ls) -> elementwise losses of z's shape."""


def sigmoid_loss(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """DPO's −log σ(βz), with conservative-DPO label smoothing."""
    h = beta * logits
    return -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)


def ipo_loss(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO's squared distance of z from 1/(2β) (label smoothing does not apply)."""
    return (logits - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """The hinge max(0, 1 − βz) (label smoothing does not apply)."""
    return torch.relu(1.0 - beta * logits)


LOSS_TYPES: Mapping[str, LossFunction] = MappingProxyType(
    {"sigmoid": sigmoid_loss, "ipo": ipo_loss, "hinge": hinge_loss}
)
"""``loss_type`` -> elementwise loss of the logits z."""

SMOOTHED_LOSS_TYPES = frozenset({"sigmoid"})
"""Loss types that take ``label_smoothing``."""
