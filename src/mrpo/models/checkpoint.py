"""Load the policy of a training run for evaluation: a saved model directory or a ``.ckpt``.

A training run leaves its policy in two forms: ``<run>/model`` (a transformers model directory,
LoRA already merged) and Lightning checkpoints ``<run>/checkpoints/*.ckpt``. A checkpoint's
``state_dict`` holds the ``PreferenceModule``'s tensors, the policy's under ``policy.<name>``
with ``<name>`` the transformers parameter name, or a peft name
(``base_model.model.<name>``, ``...lora_A.default.weight``) when the run trained LoRA adapters.
Only the weights are stored, so the model is rebuilt from the base model source the run
started from, and those weights are loaded into it (strictly: every tensor must fit).
:func:`load_evaluated_model` loads either form, or a plain model source, for scoring.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from peft import PeftModel
from transformers import PreTrainedModel

from mrpo.errors import InputError, OptionError
from mrpo.models.loading import load_model, load_tokenizer
from mrpo.models.lora import LoraConfig
from mrpo.models.policy import ModelConfig
from mrpo.models.sources import source_option

log = logging.getLogger("mrpo.evaluate")

POLICY_PREFIX = "policy."
CHECKPOINT_SUFFIX = ".ckpt"
_LORA_MARKERS = (".lora_A.", ".lora_B.", "lora_embedding_", "base_model.model.")


class CheckpointError(InputError):
    """A checkpoint that cannot be read, or whose weights do not fit the base model."""

    kind = "checkpoint error"


def checkpoint_kind(path: str | Path) -> str:
    """``"model_dir"`` for a transformers model directory, ``"ckpt"`` for a Lightning file.

    Raises:
        CheckpointError: ``path`` does not exist, or is neither kind (naming the path).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path} is a directory without config.json; pass a run's model directory "
                f"(<run>/model) or a Lightning {CHECKPOINT_SUFFIX} file"
            )
        return "model_dir"
    if path.is_file():
        if path.suffix != CHECKPOINT_SUFFIX:
            raise CheckpointError(f"{path} is not a {CHECKPOINT_SUFFIX} file or a model directory")
        return "ckpt"
    raise CheckpointError(f"{path} does not exist")


def read_policy_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The policy tensors of a ``PreferenceModule`` checkpoint, without the ``policy.`` prefix.

    The file is memory-mapped and unpickled with ``weights_only=True`` (tensors and plain
    containers only), so optimizer states are not read into memory and no code runs.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        # a truncated zip, a pickle with arbitrary objects, not a torch file at all
        raise CheckpointError(f"could not read {path} as a Lightning checkpoint: {err}") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no 'state_dict'; is it a Lightning checkpoint?")
    policy = {
        k.removeprefix(POLICY_PREFIX): v for k, v in state.items() if k.startswith(POLICY_PREFIX)
    }
    if not policy:
        raise CheckpointError(
            f"{path} has no '{POLICY_PREFIX}*' weights; it was not saved by mrpo-train"
        )
    return policy


def is_lora_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether the parameter names are peft (LoRA-wrapped) names."""
    return any(marker in key for key in state for marker in _LORA_MARKERS)


def _lora_example(state: dict[str, torch.Tensor]) -> str:
    lora_keys = [k for k in state if "lora_" in k]
    return lora_keys[0] if lora_keys else next(iter(state))


def load_checkpoint_policy(
    path: str | Path,
    base_source: str,
    *,
    dtype: str = "float32",
    cache_dir: str | Path | None = None,
    lora: LoraConfig | None = None,
) -> PreTrainedModel:
    """Rebuild the policy of a Lightning checkpoint on ``base_source``; a frozen, eval-mode model.

    For a LoRA run, ``lora`` must be the run's adapter settings: the adapters are attached to
    the base model, the checkpoint loaded, and the adapters merged into the weights (the result
    is a plain transformers model, as ``<run>/model`` is). The LoRA scale ``alpha / r`` is not
    stored in the weights, so a wrong ``alpha`` cannot be detected; a wrong ``r`` or module
    list is.

    Raises:
        CheckpointError: unreadable file, LoRA weights without ``lora`` settings (or the
            reverse), or weights that do not fit ``base_source`` (missing, unexpected or
            differently shaped tensors).
    """
    state = read_policy_state(path)
    lora = lora if lora is not None and lora.enabled else None
    lora_state = is_lora_state(state)
    if lora_state and lora is None:
        raise CheckpointError(
            f"{path} holds LoRA adapter weights (peft names such as {_lora_example(state)!r}) "
            "but no LoRA settings were given"
        )
    if lora is not None and not lora_state:
        raise CheckpointError(
            f"{path} holds full weights, not LoRA adapters; drop the LoRA settings"
        )
    model = load_model(base_source, dtype=dtype, cache_dir=cache_dir, lora=lora, trainable=False)
    _load_strict(model, state, path, base_source)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.requires_grad_(False)
    return model.eval()


def _load_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, base_source: str
) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        details = ", ".join(
            f"{len(keys)} {what} (e.g. {keys[0]!r})"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", reshaped),
            )
            if keys
        )
        raise CheckpointError(
            f"the weights in {path} do not fit the base model {base_source!r}: {details}"
        )
    model.load_state_dict(state, strict=True)


def evaluated_source(source: str, checkpoint: str | None) -> str:
    """The source whose weights are loaded: the checkpoint's model directory, else
    ``source`` (for a ``.ckpt``, the base its weights go into)."""
    if checkpoint and checkpoint_kind(checkpoint) == "model_dir":
        return checkpoint
    return source


def load_evaluated_model(
    model: ModelConfig, checkpoint: str | None, *, cache_dir: str | Path
) -> tuple[Any, Any]:
    """The model to score (frozen, eval mode, on the current CUDA device if any, else the CPU)
    and its tokenizer (``model.tokenizer``, else the checkpoint's model directory, else
    ``model.source``). The model loads first: a checkpoint that does not fit fails early.

    Raises:
        OptionError: naming ``checkpoint``, ``source`` or ``tokenizer`` for a source that
            cannot load (a hub id not cached while offline, weights that do not fit), or a
            ``quantization`` this machine cannot run.
    """
    m = model
    device = torch.device(
        f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    )
    kind = checkpoint_kind(checkpoint) if checkpoint else None
    source = evaluated_source(m.source, checkpoint)
    option = "checkpoint" if kind == "model_dir" else "source"
    loaded: torch.nn.Module
    try:
        with source_option(option):
            if kind == "ckpt":
                assert checkpoint is not None  # kind is only set for a checkpoint
                loaded = load_checkpoint_policy(
                    checkpoint, m.source, dtype=m.dtype, cache_dir=cache_dir, lora=m.lora
                )
            else:
                loaded = load_model(
                    source,
                    dtype=m.dtype,
                    cache_dir=cache_dir,
                    trainable=False,
                    quantization=m.quantization,
                    device=device,
                )
    except CheckpointError as err:
        assert checkpoint is not None  # a CheckpointError comes from a checkpoint
        raise OptionError("checkpoint", f"{err}.{checkpoint_hint(checkpoint)}") from None
    with source_option("tokenizer" if m.tokenizer else option):
        tokenizer = load_tokenizer(
            m.tokenizer or source, chat_template=m.chat_template, cache_dir=cache_dir
        )
    if m.quantization is None:  # score on this process's GPU when there is one
        loaded = torch.nn.Module.to(loaded, device)
    log.info("evaluating %s on %s", checkpoint or m.source, next(loaded.parameters()).device)
    return loaded, tokenizer


def checkpoint_hint(checkpoint: str) -> str:
    """How to load a ``.ckpt`` that did not fit, with the run's own model settings if found.

    A checkpoint at ``<run>/checkpoints/x.ckpt`` has the run's resolved config next to it
    (``<run>/config.yaml``), which names the base model and LoRA settings it trained.
    """
    run_dir = Path(checkpoint).expanduser().resolve().parent.parent
    hint = f" Evaluate the run's merged model directory ({run_dir / 'model'}) instead, or pass"
    try:
        model = OmegaConf.load(run_dir / "config.yaml").model
        lora = " model=lora" if model.lora.enabled else ""
        lora += "".join(
            f" model.lora.{k}={model.lora[k]}" for k in ("r", "alpha") if model.lora.enabled
        )
        return f"{hint} the run's model: model.source={model.source}{lora}"
    except (OSError, OmegaConfBaseException):  # no readable run config: a generic hint
        return (
            f"{hint} the base model it was trained from (model.source=...; for a LoRA run also"
            " model=lora with the run's model.lora settings)"
        )
