"""LoRA adapter settings: one dataclass for the config schema (``model.lora``) and the library."""

from __future__ import annotations

from dataclasses import dataclass

from mrpo.domains import Flag, Items, Number, Text, setting
from mrpo.errors import OptionError

ALL_LINEAR = "all-linear"
"""peft's name for "every linear layer but the output head"."""


@dataclass
class LoraConfig:
    """LoRA adapters on the policy (peft ``LoraConfig``).

    Attributes:
        enabled: train adapters (True) or the full model (False).
        r: rank of the update matrices (> 0).
        alpha: scaling numerator; the update is scaled by ``alpha / r`` (> 0).
        dropout: dropout on the adapter input, in [0, 1). This is the only dropout left in a
            model from :func:`mrpo.models.load_model`, so it is 0 unless asked for.
        target_modules: names of the linear layers that get adapters (Llama/Qwen names by
            default), or ``["all-linear"]`` for every linear layer but the output head.
    """

    enabled: bool = setting(False, Flag())
    r: int = setting(16, Number(int, ge=1))
    alpha: float = setting(32.0, Number(float, gt=0))
    dropout: float = setting(0.0, Number(float, ge=0, lt=1))
    target_modules: list[str] = setting(
        ["q_proj", "k_proj", "v_proj", "o_proj"], Items(Text(), min_len=1)
    )

    def modules(self) -> tuple[str, ...]:
        """``target_modules`` as a tuple (a single name given as a string is accepted)."""
        names = self.target_modules
        return (names,) if isinstance(names, str) else tuple(names)

    def check(self) -> None:
        """Raise :class:`~mrpo.errors.OptionError` naming the first unusable setting."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise OptionError("r", f"LoRA r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise OptionError("alpha", f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise OptionError("dropout", f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        modules = self.modules()
        if not modules or not all(isinstance(m, str) and m for m in modules):
            raise OptionError("target_modules", "LoRA target_modules must name at least one module")
