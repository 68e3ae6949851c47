"""Token log-probs straight from a causal LM's last hidden states, without its logits.

In a small model with a large vocabulary the LM head makes a training step's largest tensors:
the (tokens x V) logits, their float32 copy, the softmax kept for backward and the logits'
gradient (SmolLM2-135M: 49,152 entries per token, 365 MB per float32 copy on 8 x 232 tokens).
:func:`head_logprobs` projects only the positions that are scored, ``chunk_tokens`` rows at a
time, keeps one (chunk x V) tile alive and recomputes each tile in the backward pass instead of
saving it: O(chunk x V) memory instead of O(tokens x V), for one more head matmul in backward.

:func:`split_lm_head` says whether a model can take this path: its logits must be exactly
``lm_head(last_hidden_state)``. Models that scale or soft-cap their logits, wrap the head (LoRA
on ``lm_head``) or shard its weight (FSDP, ZeRO-3) keep the plain logits path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_TOKENS = 1024
"""Scored tokens per LM-head tile: 1024 x 49,152 float32 logits are 201 MB (SmolLM2)."""

# Model families whose causal-LM forward computes ``logits = lm_head(base_model(...)[0])``
# with nothing in between (checked in their transformers modeling code). A family outside the
# list keeps the logits path: a wrong log-prob would be silent, a slower one is not.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {
        "gemma",
        "gpt2",
        "gpt_neox",
        "llama",
        "mistral",
        "mixtral",
        "olmo",
        "olmo2",
        "phi",
        "phi3",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "smollm3",
        "stablelm",
        "starcoder2",
    }
)

# Config fields with which a model transforms its logits after the head (soft-capping, scaling).
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def unwrapped(model: torch.nn.Module) -> Any:
    """The transformers model inside a peft wrapper (the model itself when not wrapped).

    Typed ``Any``: what callers look up on it (``config``, ``get_output_embeddings``,
    ``forward``'s signature) is transformers' API, not ``nn.Module``'s.
    """
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def split_lm_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The (backbone, LM head) of a causal LM whose logits are ``head(backbone(...)[0])``.

    Args:
        model: a transformers causal LM, or a peft (LoRA) wrapper of one.

    Returns:
        The backbone module (e.g. ``LlamaModel``, LoRA layers included) and the ``nn.Linear``
        head, or None when the model must keep the logits path: not a known plain-head family
        (:data:`PLAIN_HEAD_MODEL_TYPES`), a logit transform in its config, a head that is not
        a plain ``nn.Linear`` (adapters on the head), or a head weight that is sharded or
        partitioned (FSDP, DeepSpeed ZeRO-3).
    """
    base = unwrapped(model)
    config = getattr(base, "config", None)
    if config is None or not hasattr(base, "get_output_embeddings"):
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if any(getattr(text_config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    backbone = getattr(base, "base_model", base)
    head = base.get_output_embeddings()
    if backbone is base or type(head) is not torch.nn.Linear:
        return None
    weight = head.weight
    if type(weight) not in (torch.Tensor, torch.nn.Parameter):  # DTensor (FSDP2) and the like
        return None
    if tuple(weight.shape) != (head.out_features, head.in_features):  # FSDP1 / ZeRO-3 shards
        return None
    return backbone, head


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[target] per row, in float32, chunk by chunk.

    The same numbers as projecting all rows and taking ``log_softmax`` (the logits are made in
    the inputs' dtype, or autocast's, then reduced in float32), differentiable with respect to
    ``hidden``, ``weight`` and ``bias``; the gradients of the head's weight and bias are
    accumulated in float32 over the chunks.

    Args:
        hidden: (M, H) last hidden states of the scored positions.
        weight: (V, H) LM-head weight.
        bias: (V,) LM-head bias, or None.
        targets: (M,) int64 token ids in [0, V) that each row scores.
        chunk_tokens: rows projected at a time (>= 1).

    Returns:
        (M,) float32 token log-probs.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be (M, H) and weight (V, H), got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    return _HeadLogProbs.apply(hidden, weight, bias, targets.long(), chunk_tokens)


def _project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(c, V) logits of one tile of rows, in the matmul's dtype."""
    return F.linear(hidden, weight, bias)


def _tile_buffer(rows: int, weight: torch.Tensor) -> torch.Tensor:
    """An uninitialized (rows, V) float32 tile, reused by every chunk of one call.

    Why: CPU allocations this large are fresh pages from the OS each time (glibc maps and
    unmaps them): faulting in a new 201 MB tile (1,024 rows of SmolLM2's vocabulary) took
    0.11 s per chunk on 2 cores, against 0.14 s for a 64-wide head's matmul into a used one.
    """
    return torch.empty(rows, weight.shape[0], dtype=torch.float32, device=weight.device)


def _project_into(
    tile: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.dtype]:
    """float32 logits of ``hidden``'s c rows written into ``tile[:c]``, and the matmul's dtype.

    float32 inputs outside autocast are multiplied straight into the tile; otherwise (bf16
    weights, autocast) the matmul runs as the model's would, in its own dtype, and is copied.
    """
    out = tile[: hidden.shape[0]]
    float32 = hidden.dtype == weight.dtype == torch.float32 and (
        bias is None or bias.dtype == torch.float32
    )
    if float32 and not torch.is_autocast_enabled(hidden.device.type):
        if bias is None:
            torch.mm(hidden, weight.T, out=out)
        else:
            torch.addmm(bias, hidden, weight.T, out=out)
        return out, torch.float32
    logits = _project(hidden, weight, bias)
    out.copy_(logits)
    return out, logits.dtype


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """(c,) log-sum-exp of (c, V) float32 ``logits`` over V; leaves ``exp(logits - max)`` in it.

    Why not ``torch.logsumexp``: it allocates its own (c, V) intermediate and ran at half the
    speed of this in-place form on CPU (0.19 vs 0.09 s a 1,024 x 49,152 tile); same values.
    """
    peak = logits.amax(dim=-1, keepdim=True)
    return logits.sub_(peak).exp_().sum(dim=-1).log_().add_(peak.squeeze(-1))


class _HeadLogProbs(torch.autograd.Function):
    """Autograd for :func:`head_logprobs`: saves (M,) log-normalizers, not (M, V) logits."""

    @staticmethod
    def forward(
        ctx: Any,  # autograd's context: the attributes set here are read back in backward
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_tokens: int,
    ) -> torch.Tensor:
        rows = hidden.shape[0]
        out = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        # The dtype the head's matmul runs in (autocast's under mixed precision): the backward
        # pass, which runs outside autocast, recomputes each tile in the same dtype.
        ctx.tile_dtype = weight.dtype
        tile = _tile_buffer(min(rows, chunk_tokens), weight)
        for start in range(0, rows, chunk_tokens):
            part = slice(start, start + chunk_tokens)
            logits, ctx.tile_dtype = _project_into(tile, hidden[part], weight, bias)
            picked = logits.gather(-1, targets[part, None]).squeeze(-1)
            lse[part] = _logsumexp_(logits)
            out[part] = picked - lse[part]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_tokens = chunk_tokens
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        dtype = ctx.tile_dtype
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        # The gradient matmuls run in float32 (a no-op copy for float32 models): rounding each
        # chunk's product to bf16 before summing would bias the head's gradient.
        w32 = weight.float() if need_hidden else None
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = None
        if need_weight:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None
        if need_bias and bias is not None:
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        tile = _tile_buffer(min(hidden.shape[0], ctx.chunk_tokens), weight)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], ctx.chunk_tokens):
                part = slice(start, start + ctx.chunk_tokens)
                h = hidden[part]
                g = grad_out[part].float().unsqueeze(-1)
                # d log p[target] / d z_j = 1[j = target] - p_j, times the incoming gradient,
                # computed in place in the recomputed tile.
                dz, _ = _project_into(tile, h.to(dtype), w, b)
                dz.sub_(lse[part, None]).exp_().mul_(-g)
                dz.scatter_add_(-1, targets[part, None], g)
                if grad_hidden is not None and w32 is not None:
                    grad_hidden[part] = (dz @ w32).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight.addmm_(dz.T, h.float())
                if grad_bias is not None:
                    grad_bias += dz.sum(dim=0)
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
        )
