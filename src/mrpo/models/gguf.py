"""One-time conversion of a GGUF file into a cached safetensors model directory.

transformers reads a GGUF file and de-quantizes every tensor to float, which takes tens of
seconds; a ``save_pretrained`` directory of the result loads in well under a second. So a GGUF
source is converted once into ``<cache_dir>/<name>-<hash>`` (``hash``: the first 12 hex digits
of :func:`~mrpo.models.sources.gguf_file_hash`, a hash of the file's content) holding the
float32 weights, the tokenizer with its chat template, and a marker file written last.

The conversion is atomic: it writes into a temporary directory beside the target and renames
it into place, so a killed conversion never leaves a directory that a later load trusts. When
two processes convert at the same time, both finish and the second rename fails; the loser
discards its copy and uses the winner's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mrpo.models.sources import ModelSourceError, gguf_file_hash

log = logging.getLogger("mrpo.models")

MARKER_FILE = "mrpo-conversion.json"
"""Written last into a converted directory; a directory without it is never loaded."""

_STALE_SECONDS = 24 * 3600


def converted_dir_name(name: str, digest: str) -> str:
    """Directory name of a conversion: ``<name>-<first 12 hex digits of the file hash>``."""
    return f"{name}-{digest[:12]}"


def _is_complete(directory: Path) -> bool:
    return (directory / MARKER_FILE).is_file() and (directory / "config.json").is_file()


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries of ``target`` left by conversions killed more than a day ago."""
    now = time.time()
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - stale.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:  # removed by another process meanwhile
            continue


def _drop_quantizer_marker(model: PreTrainedModel) -> None:
    """Make a GGUF-loaded (already de-quantized) model look unquantized to ``save_pretrained``.

    ``from_pretrained(gguf_file=...)`` attaches a GGUF quantizer (``model.hf_quantizer``) and a
    ``config.quantization_config``; ``save_pretrained`` refuses models with a non-serializable
    quantizer, and a saved ``quantization_config`` would make later loads look for GGUF
    blocks. With ``GgufConfig(dequantize=True)`` transformers drops both itself; this removes
    whatever remains (older transformers, or a future default).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _write_conversion(gguf_path: Path, destination: Path, digest: str) -> None:
    """De-quantize ``gguf_path`` and save model + tokenizer (float32) into ``destination``."""
    load_kwargs: dict = {"gguf_file": gguf_path.name}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:  # transformers >= 5 can keep GGUF blocks packed; we want floats
        load_kwargs["quantization_config"] = gguf_config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), dtype=torch.float32, **load_kwargs
    )
    _drop_quantizer_marker(model)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    marker = {
        "gguf_file": str(gguf_path),
        "gguf_sha256": digest,
        "transformers_version": transformers.__version__,
        "dtype": "float32",
    }
    (destination / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def ensure_converted(gguf_path: str | Path, name: str, cache_dir: str | Path) -> Path:
    """Return the converted model directory of ``gguf_path``, converting it on first use.

    Args:
        gguf_path: the GGUF file.
        name: short model name used in the directory name.
        cache_dir: parent directory of converted models (created if missing).

    Raises:
        ModelSourceError: the target directory exists but is not a complete conversion (it was
            not made by this function; delete it).
    """
    gguf_path = Path(gguf_path)
    cache_dir = Path(cache_dir).expanduser()
    # Content hashes are remembered beside the model cache (<cache>/hashes).
    digest = gguf_file_hash(gguf_path, cache_dir.parent / "hashes")
    target = cache_dir / converted_dir_name(name, digest)
    if _is_complete(target):
        return target
    if target.exists():
        raise ModelSourceError(
            f"{target} exists but is not a complete conversion of {gguf_path} "
            f"(no {MARKER_FILE}); delete it to convert again"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    # Same parent as the target, so the final rename stays on one file system (atomic).
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache_dir))
    try:
        log.info("converting the GGUF model %s (loads its weights once)", gguf_path)
        _write_conversion(gguf_path, temporary, digest)
        try:
            os.rename(temporary, target)
        except OSError:
            # Renaming onto an existing non-empty directory fails: another process won.
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target
