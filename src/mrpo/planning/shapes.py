"""A model's sizes from its config, for the memory plan: the architecture is built on the meta
device (no memory for weights, nothing read but ``config.json``)."""

from __future__ import annotations

from typing import Any

import torch

from mrpo.models.lora import LoraConfig
from mrpo.planning.memory import ModelShape


def model_shape(config: Any, lora: LoraConfig | None = None) -> ModelShape:
    """The sizes of the causal LM ``config`` (a transformers ``PretrainedConfig``) describes.

    ``lora``: the adapters whose parameters ``lora_parameters`` counts (the default targets
    when None or disabled, so that the plan can say what ``model=lora`` would take).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    largest = max((_count(layer) for blocks in layers for layer in blocks), default=0)
    return ModelShape(
        parameters=_count(model),
        layers=int(text.num_hidden_layers),
        hidden=int(text.hidden_size),
        intermediate=int(getattr(text, "intermediate_size", 4 * text.hidden_size)),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        vocab=int(text.vocab_size),
        largest_layer=largest,
        lora_parameters=lora_parameters(model, lora if lora and lora.enabled else LoraConfig()),
    )


def _count(module: torch.nn.Module) -> int:
    # parameters() yields a tied weight once.
    return sum(p.numel() for p in module.parameters())


def lora_parameters(model: torch.nn.Module, lora: LoraConfig) -> int:
    """Parameters that LoRA adapters of rank ``lora.r`` add on the targeted linear layers
    (r x (in + out) each), matched as peft matches names; ``all-linear`` is every linear
    layer but the output head."""
    targets = lora.modules()
    every = "all-linear" in targets
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        head = module.out_features == getattr(model.config, "vocab_size", -1)
        if (every and not head) or leaf in targets:
            total += lora.r * (module.in_features + module.out_features)
    return total
