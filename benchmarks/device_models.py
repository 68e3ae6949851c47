"""The device check's models: real architectures with seeded random weights, and the real weights.

Speed and memory depend on a model's shapes and kernels, not on its weights, so the speed and
memory stages build SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B and a 7B shape (Qwen2.5-7B) from
their published configs (``benchmarks/device/architectures.json``) with seeded random weights,
on the machine: no weights travel for them. The packaged SmolLM2 tokenizer (from the kit,
``$MRPO_KIT_MODEL_DIR``, else the installed packaged model) supplies the token ids, which every
vocabulary here covers. ``smoke=True`` shrinks every architecture to one narrow layer (same
model class and vocabulary) for the CPU rehearsal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ARCHITECTURES = Path(__file__).resolve().parent / "device" / "architectures.json"
SMOKE_SHAPE = {
    "num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
}  # fmt: skip


def architecture(name: str, smoke: bool = False) -> dict[str, Any]:
    """The config dict of architecture ``name`` (shrunk to one narrow layer when ``smoke``)."""
    table = json.loads(ARCHITECTURES.read_text())
    if name not in table or name.startswith("_"):
        known = [k for k in table if not k.startswith("_")]
        raise KeyError(f"unknown architecture {name!r}; known: {known}")
    config = dict(table[name])
    if smoke:
        config.update(SMOKE_SHAPE)
        config.pop("rope_scaling", None)
    return config


def tokenizer_source() -> str:
    """Where the packaged tokenizer is read: the kit's model folder, else the packaged model."""
    kit = os.environ.get("MRPO_KIT_MODEL_DIR")
    if kit and Path(kit, "tokenizer_config.json").is_file():
        return kit
    from mrpo.models import PACKAGED_MODEL

    return PACKAGED_MODEL


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen2-style decoder with this config (for the JSON)."""
    h, v, i, n = (config[k] for k in ("hidden_size", "vocab_size", "intermediate_size",
                                      "num_hidden_layers"))  # fmt: skip
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q = config["num_attention_heads"] * head_dim
    kv = config["num_key_value_heads"] * head_dim
    bias = (q + 2 * kv) if config["model_type"] == "qwen2" else 0
    layer = h * q + 2 * h * kv + q * h + bias + 3 * h * i + 2 * h
    head = 0 if config.get("tie_word_embeddings") else v * h
    return v * h + n * layer + h + head


def write_random_model(
    name: str,
    directory: Path,
    *,
    smoke: bool = False,
    dtype: str = "bfloat16",
    seed: int = 0,
    tiny_tokenizer: bool = False,
) -> dict[str, Any]:
    """Save architecture ``name`` with seeded random weights and the packaged tokenizer.

    Built on the GPU when there is one (initializing billions of weights on a CPU takes
    minutes), saved in ``dtype``. ``tiny_tokenizer``: the tests' offline tokenizer instead
    (a dry run only checks configs against the directory). Returns what the JSON records.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mrpo.models import load_tokenizer
    from mrpo.testing.tokenizers import make_tiny_tokenizer

    spec = architecture(name, smoke)
    if tiny_tokenizer:
        tokenizer = make_tiny_tokenizer("chatml")
    else:
        tokenizer = load_tokenizer(tokenizer_source())
    config = AutoConfig.for_model(
        **spec, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, dtype)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "weights": "random",
        "architecture": name,
        "smoke_shape": smoke,
        "parameters": parameter_count(spec),
        "seed": seed,
        "saved_dtype": dtype,
        "source": str(directory),
    }
