"""Load policies, references and tokenizers from the packaged GGUF model, a directory or the hub.

Public API:

- model sources: ``DEFAULT_MODEL``, ``PACKAGED_MODEL``, ``resolve_source``,
  ``packaged_gguf_path``, ``model_fingerprint``, ``default_model_cache_dir``,
  ``ModelSourceError`` (see ``mrpo.models.sources``);
- loading: ``load_model``, ``load_tokenizer``, ``disable_dropout``, ``compile_policy``,
  ``enable_gradient_checkpointing``, ``DTYPES`` (see ``mrpo.models.loading``);
- attention implementations: ``ATTENTION_IMPLEMENTATIONS`` (see ``mrpo.models.attention``);
- LoRA settings: ``LoraConfig`` (see ``mrpo.models.lora``);
- GGUF conversion cache: ``ensure_converted`` (see ``mrpo.models.gguf``);
- training checkpoints of a run: ``mrpo.models.checkpoint`` (imported on its own).
"""

from mrpo.models.attention import ATTENTION_IMPLEMENTATIONS
from mrpo.models.gguf import ensure_converted
from mrpo.models.loading import (
    DTYPES,
    compile_policy,
    disable_dropout,
    enable_gradient_checkpointing,
    load_model,
    load_tokenizer,
)
from mrpo.models.lora import LoraConfig
from mrpo.models.sources import (
    DEFAULT_MODEL,
    PACKAGED_MODEL,
    ModelSource,
    ModelSourceError,
    default_model_cache_dir,
    model_fingerprint,
    packaged_gguf_path,
    resolve_source,
)

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "DEFAULT_MODEL",
    "DTYPES",
    "PACKAGED_MODEL",
    "LoraConfig",
    "ModelSource",
    "ModelSourceError",
    "compile_policy",
    "default_model_cache_dir",
    "disable_dropout",
    "enable_gradient_checkpointing",
    "ensure_converted",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "packaged_gguf_path",
    "resolve_source",
]
