"""On-disk cache of reference-model log-probs on a list of preference rows.

References are frozen, so their log-probs on a data set never change: they are computed once,
stored here, and reused by every run and sweep job that needs the same numbers. An entry (its
key, its file format, its checks) is :mod:`mrpo.references.cache_entry`; this module keeps the
directory of entries and the locks of the processes that fill them.

Concurrency:

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
  failing disk) is a :class:`~mrpo.references.cache_entry.CacheAccessError` naming the file,
  not a traceback. Entries are created readable by the group, so the jobs of a team can share
  one cache.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mrpo.atomic import TMP_SUFFIX, atomic_write, default_mode
from mrpo.errors import InputError
from mrpo.references.cache_entry import (
    CacheAccessError,
    RefCacheKey,
    canonical_json,
    encode_entry,
    read_entry,
)
from mrpo.references.logps import RefLogps

log = logging.getLogger("mrpo.references.cache")


_SUFFIX = ".safetensors"
_LOCK_SUFFIX = ".lock"
_HOLDER_SUFFIX = ".lock.holder"


class CacheLockTimeout(InputError):
    """Another process held a cache entry's lock for longer than the configured wait."""

    kind = "cache error"


def cache_file_mode() -> int:
    """Permission bits of cache files: as ``open`` would make them, and group-readable."""
    return default_mode() | 0o040


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
                waited, holder = time.monotonic() - start, _describe_holder(holder_file)
                what = (
                    f"the reference cache entry {self.path(key).name}, which {holder} is computing"
                )
                if left is not None and waited >= self.lock_timeout:
                    raise CacheLockTimeout(
                        f"waited {waited:.0f} s for {what}; if that job is stopped or suspended, "
                        "end it (its lock goes with it), or raise references.lock_timeout_s"
                    ) from None
                log.info("waiting %.0f s for %s", waited, what)
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
