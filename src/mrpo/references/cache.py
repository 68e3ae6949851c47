"""On-disk cache of reference-model log-probs on a list of preference rows.

References are frozen, so their log-probs on a data set never change: they are computed once,
stored here, and reused by every run and sweep job that needs the same numbers.

An entry holds, for each scored row (keyed by its data set row index, which may have gaps):
the summed log-prob of the chosen and of the rejected response (float32) and the number of
response tokens of each (int64), so that both summed and per-token-mean log-probs can be read
back (:class:`mrpo.references.logps.RefLogps`). One entry is one safetensors file named by the
entry's key digest.

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

Integrity and concurrency:

- Each file carries a sha256 checksum over its metadata and tensor bytes; a damaged or partial
  file (truncated, flipped bytes, wrong shapes or dtypes, another key's file) is reported with a
  warning, treated as missing and recomputed.
- Writes are atomic (:func:`mrpo.atomic.atomic_write`: temporary file in the same directory,
  fsync, rename, fsync of the directory). A process killed mid-write leaves only a temporary
  file, which is never read; the next writer of that entry (or :meth:`RefCache.prune_temp`)
  deletes it.
- Filling an entry holds an OS file lock (``filelock``, ``flock`` on POSIX) on a per-entry lock
  file, so a second process wanting the same entry waits and then reuses the first one's result
  instead of recomputing it. The operating system releases such a lock when its holder dies, so
  a killed process never blocks others. The holder writes who it is (host, process, start time)
  beside the lock; a waiting process logs it every ``lock_poll`` seconds and gives up with a
  :class:`CacheLockTimeout` naming it after ``lock_timeout`` seconds (a suspended job holding a
  lock would otherwise stall every job that needs the entry).
- A file the cache cannot read or write for another reason than its absence (permissions, a
  failing disk) is a :class:`CacheAccessError` naming the file, not a traceback. Entries are
  created readable by the group, so the jobs of a team can share one cache.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from mrpo import __version__
from mrpo.atomic import TMP_SUFFIX, atomic_write, default_mode
from mrpo.errors import InputError
from mrpo.references.logps import FIELDS, SHARED_FIELDS, RefLogps

log = logging.getLogger("mrpo.references.cache")

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheFileError",
    "RefCache",
    "RefCacheKey",
    "RefLogps",
    "canonical_json",
    "decode_entry",
    "encode_entry",
    "numerics_label",
    "read_entry",
    "sha256_json",
]

CACHE_FORMAT_VERSION = 1
"""Version of the stored layout and of the scoring rule; part of every key."""

_SUFFIX = ".safetensors"
_LOCK_SUFFIX = ".lock"
_HOLDER_SUFFIX = ".lock.holder"


class CacheAccessError(InputError):
    """A cache file or folder that cannot be read or written (permissions, I/O)."""

    kind = "cache error"


class CacheLockTimeout(InputError):
    """Another process held a cache entry's lock for longer than the configured wait."""

    kind = "cache error"


def cache_file_mode() -> int:
    """Permission bits of cache files: as ``open`` would make them, and group-readable."""
    return default_mode() | 0o040


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


class RefCache:
    """A directory of reference log-prob entries, one file per :class:`RefCacheKey`.

    Args:
        root: the cache directory (created on first write).
        lock_timeout: seconds to wait for another process filling the same entry before
            raising :class:`CacheLockTimeout`; ``None`` waits as long as it takes.
        lock_poll: seconds between two log lines naming the lock's holder while waiting.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        lock_timeout: float | None = None,
        lock_poll: float = 30.0,
    ):
        self.root = Path(root)
        self.lock_timeout = -1.0 if lock_timeout is None else float(lock_timeout)
        self.lock_poll = float(lock_poll)

    def path(self, key: RefCacheKey) -> Path:
        """The file that stores ``key``'s entry."""
        return self.root / f"{key.digest}{_SUFFIX}"

    def lock(self, key: RefCacheKey) -> FileLock:
        """The per-entry inter-process lock that every writer of ``key`` holds (raw; writers
        take it through :meth:`locked`)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheAccessError(
                f"{self.root}: cannot create the reference cache folder ({err.strerror or err})"
            ) from None
        return FileLock(str(self.path(key)) + _LOCK_SUFFIX, timeout=self.lock_timeout)

    @contextmanager
    def locked(self, key: RefCacheKey) -> Iterator[None]:
        """Hold ``key``'s lock: wait for another holder (logging who it is), then record this
        process as the holder until the block ends.

        Raises:
            CacheLockTimeout: waited ``lock_timeout`` seconds; the message names the holder.
            CacheAccessError: the lock file cannot be created.
        """
        lock = self.lock(key)
        holder_file = Path(str(self.path(key)) + _HOLDER_SUFFIX)
        start = time.monotonic()
        while True:
            waited = time.monotonic() - start
            left = None if self.lock_timeout < 0 else self.lock_timeout - waited
            try:
                lock.acquire(
                    timeout=self.lock_poll if left is None else max(0.0, min(left, self.lock_poll))
                )
                break
            except Timeout:
                holder = _describe_holder(holder_file)
                if left is not None and time.monotonic() - start >= self.lock_timeout:
                    raise CacheLockTimeout(
                        f"waited {time.monotonic() - start:.0f} s for the reference cache entry "
                        f"{self.path(key).name}, which {holder} is computing; if that job is "
                        "stopped or suspended, end it (its lock goes with it), or raise "
                        "references.lock_timeout_s"
                    ) from None
                log.info(
                    "waiting %.0f s for the reference cache entry %s, which %s is computing",
                    time.monotonic() - start,
                    self.path(key).name,
                    holder,
                )
            except OSError as err:
                raise CacheAccessError(
                    f"{lock.lock_file}: cannot take the cache entry's lock ({err.strerror or err})"
                ) from None
        try:
            _write_holder(holder_file)
            yield
        finally:
            holder_file.unlink(missing_ok=True)
            lock.release()

    def get(self, key: RefCacheKey) -> RefLogps | None:
        """The stored entry for ``key``, or None if absent or damaged (damage logs a warning)."""
        return read_entry(self.path(key), key)

    def put(self, key: RefCacheKey, value: RefLogps, meta: Mapping[str, Any] | None = None) -> Path:
        """Store ``value`` under ``key`` (atomically, under the entry's lock); return the path."""
        with self.locked(key):
            self._remove_orphans(key)
            return self._write(key, value, meta)

    def _write(self, key: RefCacheKey, value: RefLogps, meta: Mapping[str, Any] | None) -> Path:
        path = self.path(key)
        try:
            atomic_write(path, encode_entry(key, value, meta), mode=cache_file_mode())
        except OSError as err:
            raise CacheAccessError(
                f"{path}: cannot write this reference cache file ({err.strerror or err}); check "
                "the folder's permissions and free space, or point paths.cache_dir elsewhere"
            ) from None
        return path

    def get_or_compute(
        self,
        key: RefCacheKey,
        compute_fn: Callable[[], RefLogps],
        meta: Mapping[str, Any] | None = None,
    ) -> tuple[RefLogps, bool]:
        """Return ``key``'s entry, computing and storing it first if needed.

        ``compute_fn`` runs at most once across all processes sharing the directory: the entry's
        lock is held while computing, and a process that waited for it re-reads the file.

        Returns:
            ``(value, hit)`` where ``hit`` is True if the value came from disk.
        """
        value = self.get(key)
        if value is not None:
            return value, True
        with self.locked(key):
            value = self.get(key)  # another process may have filled it while we waited
            if value is not None:
                return value, True
            self._remove_orphans(key)
            value = compute_fn()
            if not isinstance(value, RefLogps):
                raise TypeError(f"compute_fn must return RefLogps, got {type(value).__name__}")
            self._write(key, value, meta)
            return value, False

    def _remove_orphans(self, key: RefCacheKey) -> None:
        # Called with the entry's lock held: every writer of this key holds the same lock, so
        # any temp file for it now belongs to a process that died mid-write.
        for tmp in self.root.glob(f".{self.path(key).name}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)

    def prune_temp(self) -> int:
        """Delete temp files left by killed writers (skips entries being written now).

        Returns:
            The number of temp files removed.
        """
        removed = 0
        for tmp in self.root.glob(f".*{_SUFFIX}.*{TMP_SUFFIX}"):
            final = tmp.name[1:].split(_SUFFIX)[0] + _SUFFIX
            lock = FileLock(str(self.root / final) + _LOCK_SUFFIX, timeout=0)
            try:
                with lock:
                    if tmp.exists():
                        tmp.unlink()
                        removed += 1
            except TimeoutError:  # filelock.Timeout subclasses TimeoutError: a live writer
                continue
        return removed


def _write_holder(path: Path) -> None:
    """Record this process as the holder of a lock (best effort: only messages read it)."""
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with suppress(OSError):
        atomic_write(path, canonical_json(info).encode("ascii"), mode=cache_file_mode())


def _describe_holder(path: Path) -> str:
    """``process <pid> on <host> (since <time>)``, or a generic name when unknown."""
    try:
        info = json.loads(path.read_text())
        return f"process {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
