"""Load tokenizers and causal LMs (policy or frozen reference) from any model source."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mrpo.errors import OptionError
from mrpo.logprobs import split_lm_head
from mrpo.models.gguf import ensure_converted
from mrpo.models.lora import ALL_LINEAR, LoraConfig
from mrpo.models.quantization import check_runs, keep_cpu_kernels_in_range, quantization_method
from mrpo.models.sources import (
    ModelSource,
    ModelSourceError,
    default_model_cache_dir,
    resolve_source,
)

log = logging.getLogger("mrpo.models")

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
"""dtype names ``load_model`` accepts; ``auto`` keeps the dtype stored with the weights."""

_DROPOUT_MODULES = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)


def _location(source: str, cache_dir: str | Path | None) -> tuple[ModelSource, str, dict]:
    """Resolve ``source`` to (its description, what transformers loads, hub keyword arguments).

    GGUF sources are converted into the model cache on first use.
    """
    resolved = resolve_source(source)
    if resolved.kind == "gguf":
        cache = Path(cache_dir) if cache_dir is not None else default_model_cache_dir()
        return resolved, str(ensure_converted(resolved.location, resolved.name, cache)), {}
    if resolved.kind == "local" and not (Path(resolved.location) / "config.json").is_file():
        raise ModelSourceError(
            f"model source {source!r} is a directory without config.json, not a model directory"
        )
    hub_kwargs = {"revision": resolved.revision} if resolved.revision else {}
    return resolved, resolved.location, hub_kwargs


def _hub_failure(resolved: ModelSource, error: Exception) -> ModelSourceError:
    return ModelSourceError(
        f"could not load model source {resolved.source!r}: there is no such local directory, "
        f"and the Hugging Face hub id {resolved.location!r} (revision "
        f"{resolved.revision or 'main'}) could not be fetched or found in the local hub cache "
        f"(offline?). Download it once online, or pass a local directory. Cause: {error}"
    )


def load_tokenizer(
    source: str,
    *,
    chat_template: str | None = None,
    cache_dir: str | Path | None = None,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model source, ready for chat templating and padding.

    - ``chat_template`` (a Jinja string) replaces the tokenizer's own template when given.
    - A tokenizer without a pad token gets its eos token as pad token (else its unk token).
      Padding is never scored or attended to (labels -100, attention mask 0), so sharing the
      id with eos is harmless; code must mask by attention mask, never by comparing to the
      pad id.

    Args:
        source: a model source (see ``mrpo.models.sources``).
        chat_template: Jinja chat template overriding the tokenizer's, or None.
        cache_dir: directory of converted GGUF models (default ``default_model_cache_dir()``).

    Raises:
        ModelSourceError: the source cannot be loaded, its tokenizer has no chat template and
            none was given, or it has no pad, eos or unk token to pad with.
    """
    if chat_template is not None and not chat_template.strip():
        raise ValueError(f"chat_template for {source!r} is empty; pass None to keep the own one")
    resolved, location, hub_kwargs = _location(source, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **hub_kwargs)
    except (OSError, ValueError) as error:  # missing files, or files transformers cannot use
        if resolved.kind == "hub":
            raise _hub_failure(resolved, error) from error
        raise ModelSourceError(f"could not load a tokenizer from {source!r}: {error}") from error
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise ModelSourceError(
            f"the tokenizer of {source!r} has no chat template; pass one with "
            "chat_template=... (in the configs: the model's or reference's `chat_template`)"
        )
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelSourceError(f"the tokenizer of {source!r} has no pad, eos or unk token")
        tokenizer.pad_token = fallback
    return tokenizer


def _zero_config_dropout(config: PretrainedConfig) -> None:
    """Set every dropout probability of ``config`` (and its sub-configs) to 0, in place.

    Modules copy these values when they are built (e.g. Llama's ``attention_dropout``), so the
    config must be edited before the model is instantiated. Keys: ``*dropout*`` and ``*pdrop``.
    """
    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _zero_config_dropout(value)
        elif isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, 0.0)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set the probability of every ``torch.nn`` dropout layer in ``model`` to 0, in place.

    As in the DPO reference code, log-probs must not be noisy in ``train()`` mode either.
    """
    for module in model.modules():
        if isinstance(module, _DROPOUT_MODULES):
            module.p = 0.0


def _apply_lora(model: PreTrainedModel, lora: LoraConfig) -> PeftModel:
    modules = lora.modules()
    config = PeftLoraConfig(
        r=lora.r,
        # peft types lora_alpha as int; a float alpha (alpha / r is the scale) works the same.
        lora_alpha=lora.alpha,  # type: ignore[arg-type]
        lora_dropout=lora.dropout,
        target_modules=ALL_LINEAR if modules == (ALL_LINEAR,) else list(modules),
        task_type="CAUSAL_LM",
    )
    # get_peft_model freezes every base weight; only the adapters stay trainable.
    return get_peft_model(model, config)


def _quantized_kwargs(
    quantization: str | None, dtype: str, device: str | torch.device | None
) -> dict[str, Any]:
    """``from_pretrained`` arguments that load quantized weights straight onto ``device``."""
    if quantization is None:
        return {}
    method = quantization_method(quantization)
    compute = DTYPES[dtype]
    compute_dtype = compute if isinstance(compute, torch.dtype) else torch.bfloat16
    target = torch.device(device if device is not None else "cpu")
    check_runs(quantization, target)
    # Quantized weights are made on the device they run on; they are never moved or cast later.
    return {"quantization_config": method.bnb_config(compute_dtype), "device_map": {"": target}}


def _check_load_options(
    source: str, dtype: str, lora: LoraConfig | None, quantization: str | None, trainable: bool
) -> bool:
    """Raise for the options :func:`load_model` refuses; return whether LoRA is on."""
    if dtype not in DTYPES:
        raise ValueError(
            f"unknown dtype {dtype!r} for model {source!r}; choose from {list(DTYPES)}"
        )
    use_lora = lora is not None and lora.enabled
    if lora is not None and use_lora:
        lora.check()
    if quantization is not None and trainable and not use_lora:
        raise OptionError(
            "lora", "a quantized model trains LoRA adapters only; enable LoRA (lora.enabled)"
        )
    return use_lora


def load_model(
    source: str,
    *,
    dtype: str = "float32",
    cache_dir: str | Path | None = None,
    lora: LoraConfig | None = None,
    trainable: bool = True,
    attn_implementation: str | None = None,
    quantization: str | None = None,
    device: str | torch.device | None = None,
) -> PreTrainedModel | PeftModel:
    """Load a causal LM from a model source, with dropout disabled.

    Every dropout probability is 0 (config and layers), so ``train()`` mode computes the same
    log-probs as ``eval()`` mode.

    Args:
        source: a model source (see ``mrpo.models.sources``); GGUF sources are converted into
            ``cache_dir`` on first use.
        dtype: one of ``DTYPES``: "float32", "bfloat16", "float16" or "auto"; with
            ``quantization`` the dtype of the layers left unquantized and the compute dtype.
        cache_dir: directory of converted GGUF models (default ``default_model_cache_dir()``).
        lora: when given and ``enabled``, wrap the model in LoRA adapters (a peft
            ``PeftModel``); only the adapters are trainable.
        trainable: False gives a frozen model (eval mode, no parameter requires grad), e.g.
            for a reference.
        attn_implementation: one of :data:`mrpo.models.attention.ATTENTION_KERNELS` (None:
            transformers' default, ``sdpa``); ``flex_attention`` makes packed rows skip their
            masked tiles on GPUs (:mod:`mrpo.logprobs.attention`).
        quantization: a :data:`mrpo.models.quantization.QUANTIZATIONS` name (``nf4``, ...)
            to load the linear layers quantized by bitsandbytes, or None. A trainable
            quantized model is prepared for k-bit training (peft) and needs ``lora``.
        device: where a quantized model is loaded (default CPU); unquantized models load on
            the CPU and are moved by the caller.

    Raises:
        ValueError: an unknown dtype.
        OptionError: unusable LoRA settings (naming the setting), an unknown quantization,
            or one this machine cannot run (option ``quantization``), or a trainable
            quantized model without LoRA (option ``lora``).
        ModelSourceError: the source cannot be found or loaded (the message names it).
    """
    use_lora = _check_load_options(source, dtype, lora, quantization, trainable)
    quantized = _quantized_kwargs(quantization, dtype, device)
    resolved, location, hub_kwargs = _location(source, cache_dir)
    log.info("loading model %s (%s)", source, dtype)
    try:
        config = AutoConfig.from_pretrained(location, **hub_kwargs)
        _zero_config_dropout(config)
        attention = (
            {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        )
        model = AutoModelForCausalLM.from_pretrained(
            location, config=config, dtype=DTYPES[dtype], **attention, **quantized, **hub_kwargs
        )
    except (OSError, ValueError) as error:  # missing files, or files transformers cannot use
        if resolved.kind == "hub":
            raise _hub_failure(resolved, error) from error
        raise ModelSourceError(f"could not load model from {source!r}: {error}") from error
    disable_dropout(model)
    if quantized:
        keep_cpu_kernels_in_range(model, trainable=trainable)
    if quantized and trainable:
        # peft's recipe: norms and the head in float32, frozen quantized weights. Gradient
        # checkpointing is left to enable_gradient_checkpointing (non-reentrant).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    result: PreTrainedModel | PeftModel = model
    if use_lora:
        assert lora is not None
        result = _apply_lora(model, lora)
    if not trainable:
        result.requires_grad_(False)
        result.eval()
    return result


def compile_policy(model: torch.nn.Module) -> torch.nn.Module:
    """Compile ``model``'s forward with ``torch.compile``, in place; return it.

    In place (``nn.Module.compile``) rather than ``torch.compile(model)``, so that parameter
    names, checkpoints and ``save_pretrained`` are unchanged. ``dynamic=True``: batches come in
    many padded widths, and recompiling for each width would cost more than it saves.
    Models with a fused LM-head path (:func:`mrpo.logprobs.split_lm_head`) have their backbone
    compiled, since that path calls the backbone, not the model's forward; the model's own
    forward calls the same compiled backbone.
    """
    parts = split_lm_head(model)
    (model if parts is None else parts[0]).compile(dynamic=True)
    return model


def enable_gradient_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    """Recompute each layer's activations in the backward pass (less memory, more compute).

    Always the non-reentrant variant: transformers before 5 defaulted to the reentrant one,
    under which LoRA adapters get no gradient when the frozen embeddings' output does not
    require grad.
    """
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5
    if callable(enable):
        enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(  # type: ignore[operator]  # transformers < 5
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    return model


def model_config(source: str, *, cache_dir: str | Path | None = None) -> PretrainedConfig:
    """The transformers config of a model source, without loading its weights.

    A directory's config is its ``config.json``, a hub id's comes from the hub or the local
    hub cache; a GGUF source's is read from its converted directory (converted on first use,
    as its tokenizer is, since transformers reads GGUF metadata only slowly).

    Raises:
        ModelSourceError: the source or its config cannot be read.
    """
    resolved, location, hub_kwargs = _location(source, cache_dir)
    try:
        return AutoConfig.from_pretrained(location, **hub_kwargs)
    except (OSError, ValueError) as error:
        if resolved.kind == "hub":
            raise _hub_failure(resolved, error) from error
        raise ModelSourceError(f"could not read the config of {source!r}: {error}") from error
