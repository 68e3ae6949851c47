"""One entry of the reference log-prob cache: its key and its file format.

An entry holds, for each scored row (keyed by its data set row index, which may have gaps):
the summed log-prob of the chosen and of the rejected response (float32) and the number of
response tokens of each (int64), so that both summed and per-token-mean log-probs can be read
back (:class:`mrpo.references.logps.RefLogps`). One entry is one safetensors file named by the
entry's key digest; :class:`~mrpo.references.cache.RefCache` keeps the directory of them.

Key parts (:class:`RefCacheKey`): everything that determines the numbers.

- ``model``: identity of the weights (``mrpo.models.model_fingerprint``: hub commit, or a hash
  of the weight files).
- ``tokenizer``: identity of the tokenizer (a hash of its vocabulary/merges or fast-tokenizer JSON).
- ``chat_template``: the chat template text actually used to render prompts.
- ``system_prompt``: the system message inserted into every prompt (``None`` for none).
- ``data``: fingerprint of the exact rows scored: their token ids and row indices.
- ``max_length``, ``max_prompt_length``, ``truncation``: the length limits and the truncation rule.
- ``dtype``: the dtype the model ran in.
- ``numerics``: what computed the numbers (:func:`numerics_label`): the torch and transformers
  versions (and bitsandbytes' for quantized weights) and the device type, so an upgrade or a
  move to a GPU never reuses log-probs it would not reproduce.
- ``shared_logps``: the entry also holds each response's log-prob up to its pair's shared
  length (LD-DPO, ``loss.ld_alpha``): two more columns. A key part only when set, so entries
  without them keep their digests, and an entry without them is never read for a key that
  asks for them (it has another digest: the columns are scored, not guessed).
- ``format_version``: :data:`CACHE_FORMAT_VERSION`, bumped whenever the stored layout or the way
  the numbers are computed changes, so old entries are never misread.

The key digest is the sha256 of the canonical JSON (sorted keys, no whitespace) of these parts.

Each file carries a sha256 checksum over its metadata and tensor bytes; a damaged or partial
file (truncated, flipped bytes, wrong shapes or dtypes, another key's file) is reported with a
warning, treated as missing and recomputed. A file that cannot be read for another reason than
its absence (permissions, a failing disk) is a :class:`CacheAccessError` naming the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from mrpo import __version__
from mrpo.errors import InputError
from mrpo.references.logps import FIELDS, SHARED_FIELDS, RefLogps

# The cache's log (damaged files), whichever of its modules writes it.
log = logging.getLogger("mrpo.references.cache")


CACHE_FORMAT_VERSION = 1
"""Version of the stored layout and of the scoring rule; part of every key."""


class CacheAccessError(InputError):
    """A cache file or folder that cannot be read or written (permissions, I/O)."""

    kind = "cache error"


def canonical_json(obj: Any) -> str:
    """Serialize ``obj`` as canonical JSON: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(obj: Any) -> str:
    """Hex sha256 digest of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("ascii")).hexdigest()


def numerics_label(
    device: torch.device | str, quantization: str | None = None, *, fused_head: bool = True
) -> str:
    """What computes a reference's numbers besides its weights and inputs, for cache keys.

    Kernels change between torch and transformers releases (attention paths, fused ops,
    reductions) and between a CPU and a GPU, so their log-probs can differ in the last bits;
    a cache entry is reused only where it would be reproduced. Quantized weights also depend
    on bitsandbytes' kernels, and log-probs from full logits (``fused_head=False``) take
    other reductions than the fused LM head.

    Returns:
        e.g. ``"torch 2.13.0+cpu; transformers 5.25.0; cpu"``.
    """
    parts = [
        f"torch {torch.__version__}",
        f"transformers {importlib.metadata.version('transformers')}",
    ]
    if quantization is not None:
        parts.append(f"bitsandbytes {importlib.metadata.version('bitsandbytes')}")
    parts.append(torch.device(device).type)
    if not fused_head:
        parts.append("logits head")
    return "; ".join(parts)


@dataclass(frozen=True)
class RefCacheKey:
    """Everything that determines one reference's log-probs on one list of rows.

    See the module docstring for the meaning of each part.
    """

    model: str
    tokenizer: str
    chat_template: str | None
    system_prompt: str | None
    data: str
    max_length: int
    max_prompt_length: int | None
    truncation: str
    dtype: str
    numerics: str
    format_version: int = CACHE_FORMAT_VERSION
    shared_logps: bool = False

    def parts(self) -> dict[str, Any]:
        """The key parts as a JSON-able dict (``shared_logps`` only when set)."""
        parts = asdict(self)
        if not self.shared_logps:
            del parts["shared_logps"]
        return parts

    @property
    def columns(self) -> tuple[str, ...]:
        """The tensor names an entry of this key holds."""
        return FIELDS + SHARED_FIELDS if self.shared_logps else FIELDS

    @property
    def digest(self) -> str:
        """Hex sha256 of the canonical JSON of :meth:`parts`; names the cache file."""
        return sha256_json(self.parts())


class CacheFileError(ValueError):
    """A cache file is damaged, partial, or does not match its key."""


def _checksum(meta_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the metadata JSON and each tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in (n for n in FIELDS + SHARED_FIELDS if n in tensors):
        t = tensors[name].contiguous()
        h.update(canonical_json([name, str(t.dtype), list(t.shape)]).encode("ascii"))
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def encode_entry(key: RefCacheKey, value: RefLogps, meta: Mapping[str, Any] | None) -> bytes:
    """Serialize one entry (tensors + metadata + checksum) to safetensors bytes."""
    if value.columns != key.columns:
        raise ValueError(f"the key's entry holds {key.columns}, the value {value.columns}")
    tensors = value.tensors()
    info = {
        "key": key.parts(),
        "digest": key.digest,
        "rows": len(value),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mrpo_version": __version__,
        "meta": dict(meta or {}),
    }
    meta_json = canonical_json(info)
    return _st_save(tensors, {"info": meta_json, "checksum": _checksum(meta_json, tensors)})


def _read_header_metadata(data: bytes) -> dict[str, str]:
    # safetensors layout: u64 little-endian header length, then that many bytes of JSON.
    if len(data) < 8:
        raise CacheFileError("file shorter than its header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CacheFileError("header longer than the file (truncated)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheFileError(f"unreadable header: {err}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CacheFileError("missing metadata")
    return meta


def decode_entry(data: bytes, key: RefCacheKey) -> tuple[RefLogps, dict[str, Any]]:
    """Parse and verify the bytes of one entry; return its values and metadata.

    Raises:
        CacheFileError: if anything is damaged, inconsistent or belongs to another key.
    """
    meta = _read_header_metadata(data)
    meta_json, checksum = meta.get("info"), meta.get("checksum")
    if not isinstance(meta_json, str) or not isinstance(checksum, str):
        raise CacheFileError("missing info or checksum metadata")
    try:
        tensors = _st_load(data)
        info = json.loads(meta_json)
    except Exception as err:  # safetensors raises its own error types for bad payloads
        raise CacheFileError(f"unreadable payload: {err}") from None
    if set(tensors) != set(key.columns):
        raise CacheFileError(f"tensor names {sorted(tensors)} != {sorted(key.columns)}")
    if _checksum(meta_json, tensors) != checksum:
        raise CacheFileError("checksum mismatch")
    if info.get("digest") != key.digest or info.get("key") != key.parts():
        raise CacheFileError("the file belongs to another key")
    try:
        value = RefLogps(**tensors)
    except ValueError as err:
        raise CacheFileError(str(err)) from None
    if len(value) != info.get("rows"):
        raise CacheFileError(f"{len(value)} rows stored, metadata says {info.get('rows')}")
    return value, info


def read_entry(path: Path, key: RefCacheKey) -> RefLogps | None:
    """The verified values stored at ``path`` for ``key``; None if the file is absent or damaged.

    Damage (see :func:`decode_entry`) logs a warning: the caller recomputes the values.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:  # permissions, I/O: the file exists but cannot be used
        raise CacheAccessError(
            f"{path}: cannot read this reference cache file ({err.strerror or err}); check its "
            "permissions, or point paths.cache_dir at a cache this user can read"
        ) from None
    try:
        value, _ = decode_entry(data, key)
    except CacheFileError as err:
        log.warning("damaged reference cache file %s (%s); it will be recomputed", path, err)
        return None
    return value
