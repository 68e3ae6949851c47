"""The attention implementations a policy may be loaded with (``model.attn_implementation``),
and what each needs from the machine and the model: checked before any model loads.

Each implementation is an entry of :data:`ATTENTION_KERNELS`. Training uses the configured
one in every layout (padded, prefix-shared, packed: :mod:`mrpo.logprobs.attention` builds the
mask each takes); decoding during evaluation always runs the slot decoder's own SDPA attention
whatever is configured (:func:`mrpo.evals.slots.slot_attention`), so a kernel that takes no
arbitrary mask, or none in the decoder's form, never sees one.

Refused before loading, each naming ``model.attn_implementation``:

- a kernel on a machine it cannot train on: FlexAttention has no backward pass on the CPU
  (torch 2.13: ``FlexAttention does not support backward on CPU``), and the flash-attention
  kernels are CUDA-only;
- a flash-attention kernel with neither its package nor transformers' ``kernels`` fallback
  installed;
- a model family that does not implement the kernel (GPT-2 has no FlexAttention), as
  transformers would refuse it only while loading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import (
    is_flash_attn_2_available,
    is_flash_attn_3_available,
    is_kernels_available,
)

from mrpo.errors import OptionError


def _always() -> bool:
    return True


@dataclass(frozen=True)
class AttentionKernel:
    """What one attention implementation needs.

    Attributes:
        model_flag: the transformers model class attribute that says a family implements it
            (None: every family does).
        cpu_refusal: why it cannot train a policy on the CPU (None: it can).
        installed: whether the code it runs is importable on this machine.
        package: what to install when ``installed`` is false.
    """

    model_flag: str | None = None
    cpu_refusal: str | None = None
    installed: Callable[[], bool] = _always
    package: str = ""


_CUDA_ONLY = "flash-attention kernels run on CUDA GPUs only"

ATTENTION_KERNELS: dict[str, AttentionKernel] = {
    "eager": AttentionKernel(),
    "sdpa": AttentionKernel(model_flag="_supports_sdpa"),
    "flex_attention": AttentionKernel(
        model_flag="_supports_flex_attn",
        cpu_refusal="FlexAttention has no backward pass on the CPU (training needs one)",
    ),
    "flash_attention_2": AttentionKernel(
        model_flag="_supports_flash_attn",
        cpu_refusal=_CUDA_ONLY,
        installed=lambda: is_flash_attn_2_available() or is_kernels_available(),
        package="flash-attn (or transformers' kernels fallback: pip install kernels)",
    ),
    "flash_attention_3": AttentionKernel(
        model_flag="_supports_flash_attn",
        cpu_refusal=_CUDA_ONLY,
        installed=lambda: is_flash_attn_3_available() or is_kernels_available(),
        package="flash-attn 3 (or transformers' kernels fallback: pip install kernels)",
    ),
}
"""Every accepted ``model.attn_implementation`` (null keeps transformers' default, sdpa)."""

ATTENTION_IMPLEMENTATIONS = tuple(ATTENTION_KERNELS)


def check_attention_runs(name: str, device: torch.device | str) -> None:
    """Raise unless a policy with attention ``name`` can train on ``device``.

    Raises:
        OptionError: (option ``attn_implementation``) an unknown name, a kernel that cannot
            train on ``device``'s kind, or one whose package is not installed.
    """
    kernel = _kernel(name)
    if torch.device(device).type == "cpu" and kernel.cpu_refusal is not None:
        raise OptionError(
            "attn_implementation",
            f"{name!r} cannot train on the CPU: {kernel.cpu_refusal}; use sdpa or eager on "
            "the CPU (evaluation decoding uses its own SDPA attention with any setting)",
        )
    if not kernel.installed():
        raise OptionError(
            "attn_implementation", f"{name!r} needs {kernel.package}, which is not installed"
        )


def check_attention_model(name: str, config: PretrainedConfig) -> None:
    """Raise unless the causal LM family ``config`` describes implements attention ``name``.

    Raises:
        OptionError: (option ``attn_implementation``) the family's transformers class says it
            does not support ``name``. A family transformers does not map is left to loading.
    """
    kernel = _kernel(name)
    found: Any = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    model_class = found[0] if isinstance(found, tuple) else found  # (class, ...) in some maps
    if kernel.model_flag is None or model_class is None:
        return
    if not getattr(model_class, kernel.model_flag, False):
        raise OptionError(
            "attn_implementation",
            f"{model_class.__name__} does not implement {name!r}; supported: "
            f"{supported_attention(model_class)}",
        )


def supported_attention(model_class: type) -> list[str]:
    """The :data:`ATTENTION_KERNELS` names a transformers model class implements."""
    return [
        name
        for name, kernel in ATTENTION_KERNELS.items()
        if kernel.model_flag is None or getattr(model_class, kernel.model_flag, False)
    ]


def _kernel(name: str) -> AttentionKernel:
    if name not in ATTENTION_KERNELS:
        raise OptionError(
            "attn_implementation", f"unknown {name!r}; one of {list(ATTENTION_KERNELS)} or null"
        )
    return ATTENTION_KERNELS[name]
