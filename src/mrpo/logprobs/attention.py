"""Attention masks for :class:`~mrpo.logprobs.packed_rows.PackedRows`; which models take them.

A packed row needs a mask that is not plain causal: a token attends to the earlier tokens of
its own block that are shared or on its own branch (:mod:`mrpo.logprobs.packed_rows`).
transformers models pass a 4-D mask given as ``attention_mask`` straight to their attention,
so the mask is made here, in the form the model's attention implementation takes
(:data:`MASK_BUILDERS`):

- ``sdpa`` and ``eager`` (CPU, and GPUs without FlexAttention): a dense additive float mask
  (R, 1, T, T), 0 where attention is allowed and the dtype's minimum elsewhere; SDPA and the
  eager softmax then give exactly zero weight to the masked keys.
- ``flex_attention`` (GPUs): a FlexAttention ``BlockMask`` from the same rule, whose
  fully masked tiles are skipped, so a long row of many short sequences costs about what the
  sequences cost alone.

:func:`packed_mask_builder` says whether a model can take packed rows at all: a family whose
positions come only from ``position_ids`` and whose attention takes the mask as given
(:data:`PACKED_MODEL_TYPES`), without sliding-window layers (their own window mask would be
replaced). Any other model keeps the padded layout: a wrong log-prob would be silent, a slower
one is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mrpo.logprobs.fused_head import unwrapped

# Families whose decoder takes a 4-D ``attention_mask`` as is and positions from
# ``position_ids`` (rotary or learned absolute), nothing else that mixes tokens (no ALiBi built
# from a 2-D mask, no token types): checked in their transformers modeling code. Llama, Qwen2
# and GPT-2 are tested against the padded layout (tests/test_packed_logprobs.py).
PACKED_MODEL_TYPES = frozenset(
    {"gpt2", "llama", "mistral", "olmo", "olmo2", "qwen2", "qwen3", "smollm3", "starcoder2"}
)

MaskBuilder = Callable[[torch.Tensor, torch.Tensor, torch.dtype], Any]
"""``(segment (R, T), branch (R, T), dtype) -> attention_mask`` in an implementation's form."""


def allowed_attention(segment: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """(R, T, T) bool: may the query at t attend to the key at u (rule of the module doc)?

    Query t sees key u when u <= t, both are in the same block, and u is a shared token or on
    t's branch. Padding (segment -1) sees the padding before it, itself included, so that no
    row of the mask is empty (an empty row would make NaN in the softmax); no real token sees
    padding.
    """
    width = segment.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()
    same_block = segment[:, :, None] == segment[:, None, :]
    same_branch = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    return causal & same_block & same_branch


def additive_mask(segment: torch.Tensor, branch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, T, T) mask in ``dtype``: 0 where attention is allowed, the dtype's minimum
    elsewhere."""
    allowed = allowed_attention(segment, branch)[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def block_mask(segment: torch.Tensor, branch: torch.Tensor, dtype: torch.dtype) -> Any:
    """A FlexAttention ``BlockMask`` of :func:`allowed_attention` (``dtype`` is not needed)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        same = segment[b, q] == segment[b, kv]
        shared_or_own = (branch[b, kv] == 0) | (branch[b, kv] == branch[b, q])
        return (kv <= q) & same & shared_or_own

    rows, width = segment.shape
    return create_block_mask(mask_mod, rows, None, width, width, device=segment.device)


MASK_BUILDERS: dict[str, MaskBuilder] = {
    "sdpa": additive_mask,
    "eager": additive_mask,
    "flex_attention": block_mask,
}
"""The mask of packed rows for each attention implementation (``config._attn_implementation``)
that can take it; flash-attention kernels take no arbitrary mask."""


def packed_mask_builder(model: torch.nn.Module) -> MaskBuilder | None:
    """How to mask packed rows for ``model``, or None when it must keep the padded layout.

    Args:
        model: a transformers causal LM, or a peft wrapper of one.

    Returns:
        The model's entry of :data:`MASK_BUILDERS` when its family is in
        :data:`PACKED_MODEL_TYPES` and none of its layers uses sliding-window attention; None
        otherwise.
    """
    config = getattr(unwrapped(model), "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "model_type", None) not in PACKED_MODEL_TYPES:
        return None
    layer_types = getattr(text, "layer_types", None) or ()
    if any(kind != "full_attention" for kind in layer_types):
        return None
    if getattr(text, "sliding_window", None) is not None and getattr(
        text, "use_sliding_window", True
    ):
        return None
    return MASK_BUILDERS.get(getattr(text, "_attn_implementation", None) or "eager")
