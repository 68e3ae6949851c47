"""Peak memory of a training run per device, estimated before any model loads (pure math).

The estimate adds what a training step holds at its peak (the backward pass of the largest
batch), in bytes:

- ``process``: what the process holds already (on a CPU its resident memory when the plan is
  made: Python, the libraries, the data; on a GPU nothing: ``max_memory_allocated`` counts
  torch's allocations only);
- ``weights``: the policy's parameters (``weight_bytes`` each; 1/N of them under FSDP over N
  devices, plus the largest layer gathered whole while it runs);
- ``gradients`` and ``optimizer``: one gradient and ``optimizer_states`` states per trainable
  parameter (all of them, or LoRA's adapters), sharded like the weights under FSDP;
- ``activations``: what each decoder layer keeps for the backward pass, per token (the
  inputs of its norms, projections, attention and MLP: :func:`layer_activation_elements`),
  times the layers; with gradient checkpointing only each layer's input is kept, and one
  layer's activations are recomputed at a time. Rows whose attention builds its score matrix
  (no fused kernel) also keep ``heads x row_tokens**2`` scores per row and layer;
- ``lm_head``: the fused head's tiles (a tile of ``tile_tokens x vocab`` float32 logits and
  its gradient), or on the logits path four ``scored_tokens x vocab`` float32 copies (logits,
  float32 log-softmax, the softmax kept for backward, its gradient);
- ``references``: reference models loaded beside the policy (live mode), each a whole copy of
  its weights, and their inference pass (one layer's activations at a time, plus a head tile).

Shapes come from a model's ``config.json`` (:mod:`mrpo.planning.shapes`), never from its weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

GB = 2**30
FP32 = 4


@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes, as its config gives them.

    Attributes:
        parameters: all parameters (tied embeddings counted once).
        layers, hidden, intermediate, heads, kv_heads, vocab: the config's sizes.
        largest_layer: parameters of the largest decoder layer (what FSDP gathers at once).
        lora_parameters: parameters of the LoRA adapters the run's (or the default) targets
            would add.
    """

    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    largest_layer: int = 0
    lora_parameters: int = 0


@dataclass(frozen=True)
class RunShape:
    """What a run does with the model: its largest batch and its settings.

    Attributes:
        batch_tokens: tokens through the policy in the largest training batch.
        rows: rows of that batch; ``row_tokens`` the longest row's tokens.
        scored_tokens: response tokens of that batch (positions through the LM head).
        weight_bytes: bytes per stored weight (4 float32, 2 bfloat16, 0.5 for 4-bit).
        activation_bytes: bytes per activation element (2 under 16-bit autocast).
        optimizer_states: states per trainable parameter (AdamW: 2, SGD with momentum: 1).
        lora: train LoRA adapters (True) or every parameter.
        gradient_checkpointing: keep only each layer's input for the backward pass.
        fused_head: the fused LM head (tiles) instead of the logits.
        tile_tokens: scored tokens per LM-head tile.
        attention_scores: the attention builds its (heads x T x T) score matrix and keeps it.
        live_models: reference models loaded beside the policy (live mode; 0 when cached).
        shards: devices the policy's weights are sharded over (FSDP; 1: whole).
        process_bytes: memory the process holds before any model loads.
    """

    batch_tokens: int
    rows: int
    row_tokens: int
    scored_tokens: int
    weight_bytes: float = FP32
    activation_bytes: int = FP32
    optimizer_states: int = 2
    lora: bool = False
    gradient_checkpointing: bool = False
    fused_head: bool = True
    tile_tokens: int = 1024
    attention_scores: bool = False
    live_models: int = 0
    shards: int = 1
    process_bytes: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate: bytes per component (see the module doc) and their sum."""

    components: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.components.values())

    @property
    def total_gb(self) -> float:
        return self.total / GB

    def as_dict(self) -> dict[str, float]:
        """GB per component and ``estimated_peak_gb`` (for ``summary.json``)."""
        parts = {f"{k}_gb": round(v / GB, 4) for k, v in self.components.items()}
        return {"estimated_peak_gb": round(self.total_gb, 4), **parts}


def layer_activation_elements(model: ModelShape) -> int:
    """Elements one decoder layer keeps per token for its backward pass (no checkpointing).

    Two norms keep their input and output (4h); attention keeps q, k and v (k and v repeated
    to every head for the fused kernel: 3h), its output and the output projection's input
    (2h); the gated MLP keeps the gate and up projections, the activated gate and the product
    that enters the down projection (4 x intermediate).
    """
    return 9 * model.hidden + 4 * model.intermediate


def activation_bytes(model: ModelShape, run: RunShape) -> float:
    """What the layers keep for the backward pass of the largest batch (module doc)."""
    b = run.activation_bytes
    per_layer = run.batch_tokens * layer_activation_elements(model) * b
    scores = run.rows * model.heads * run.row_tokens**2 * b if run.attention_scores else 0
    if run.gradient_checkpointing:
        kept = model.layers * run.batch_tokens * model.hidden * b
        return kept + per_layer + scores
    return model.layers * (per_layer + scores)


def head_bytes(model: ModelShape, run: RunShape, *, training: bool = True) -> float:
    """The LM head's float32 tiles (fused) or logits copies at their peak."""
    if run.fused_head:
        tokens = min(run.tile_tokens, max(run.scored_tokens, 1))
        return (2 if training else 1) * tokens * model.vocab * FP32
    return (4 if training else 2) * run.scored_tokens * model.vocab * FP32


def estimate_memory(model: ModelShape, run: RunShape) -> MemoryPlan:
    """The run's estimated peak memory on one device (module doc)."""
    shards = max(run.shards, 1)
    gathered = model.largest_layer * run.weight_bytes if shards > 1 else 0
    weights = model.parameters * run.weight_bytes / shards + gathered
    if run.lora:
        trainable, trainable_shards = model.lora_parameters, 1  # adapters stay whole
        weights += model.lora_parameters * FP32
    else:
        trainable, trainable_shards = model.parameters, shards
    # Adapters and (mixed precision or not) full-model gradients and states are float32.
    grads = trainable * FP32 / trainable_shards
    optimizer = run.optimizer_states * trainable * FP32 / trainable_shards
    refs = 0.0
    if run.live_models:
        inference = run.batch_tokens * layer_activation_elements(model) * run.activation_bytes
        refs = run.live_models * model.parameters * run.weight_bytes
        refs += inference + head_bytes(model, run, training=False)
    return MemoryPlan(
        {
            "process": float(run.process_bytes),
            "weights": weights,
            "gradients": grads,
            "optimizer": optimizer,
            "activations": activation_bytes(model, run),
            "lm_head": head_bytes(model, run),
            "references": refs,
        }
    )


# Settings that lower the estimate, by the config override a user types. Each maps a run to
# the run with that override (None where it changes nothing: already set).
def _checkpointing(model: ModelShape, run: RunShape) -> RunShape | None:
    return None if run.gradient_checkpointing else replace(run, gradient_checkpointing=True)


def _half_batch(model: ModelShape, run: RunShape) -> RunShape | None:
    if run.rows <= 1:
        return None
    return replace(
        run,
        batch_tokens=run.batch_tokens // 2,
        rows=run.rows // 2,
        scored_tokens=run.scored_tokens // 2,
    )


def _lora(model: ModelShape, run: RunShape) -> RunShape | None:
    return None if run.lora or model.lora_parameters == 0 else replace(run, lora=True)


def _fused_head(model: ModelShape, run: RunShape) -> RunShape | None:
    return None if run.fused_head else replace(run, fused_head=True)


def _cached_references(model: ModelShape, run: RunShape) -> RunShape | None:
    return replace(run, live_models=0) if run.live_models else None


Fix = Callable[[ModelShape, RunShape], "RunShape | None"]

FIXES: dict[str, Fix] = {
    "model.gradient_checkpointing=true": _checkpointing,
    "data.batch_size=<half>": _half_batch,
    "model=lora": _lora,
    "model.fused_lm_head=true": _fused_head,
    "references.mode=cached": _cached_references,
}
"""Config overrides that lower a run's peak, and what each does to the run's shape."""


def memory_fixes(
    model: ModelShape, run: RunShape, capacity: float, *, devices: int = 1
) -> list[tuple[str, float]]:
    """The overrides that lower the estimate, each with its estimated peak in bytes, those
    that fit ``capacity`` first (then by peak); ``trainer=fsdp`` where ``devices`` > 1."""
    fixes: dict[str, Fix] = dict(FIXES)
    if devices > 1 and run.shards == 1:
        fixes[f"trainer=fsdp (over {devices} devices)"] = lambda m, r: replace(r, shards=devices)
    found = []
    for key, fix in fixes.items():
        changed = fix(model, run)
        if changed is not None:
            found.append((key, estimate_memory(model, changed).total))
    before = estimate_memory(model, run).total
    found = [(k, peak) for k, peak in found if peak < before]
    return sorted(found, key=lambda kv: (kv[1] > capacity, kv[1]))
