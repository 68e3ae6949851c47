"""Load the policy of a training run for evaluation: a saved model directory or a ``.ckpt``.

A training run leaves its policy in two forms: ``<run>/model`` (a transformers model directory,
LoRA already merged) and Lightning checkpoints ``<run>/checkpoints/*.ckpt``. A checkpoint's
``state_dict`` holds the ``PreferenceModule``'s tensors, the policy's under ``policy.<name>``
with ``<name>`` the transformers parameter name, or a peft name
(``base_model.model.<name>``, ``...lora_A.default.weight``) when the run trained LoRA adapters.
Only the weights are stored, so the model is rebuilt from the base model source the run
started from, and those weights are loaded into it (strictly: every tensor must fit).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from mrpo.errors import InputError
from mrpo.models.loading import load_model
from mrpo.models.lora import LoraConfig

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
