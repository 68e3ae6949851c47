"""The one atomic file writer: every result file (cache entries, summaries, eval results)
goes through :func:`atomic_write`.

A reader sees either the old file or the complete new one, never a partial file: the bytes go
to a temporary file in the target's folder (same file system, so the rename is atomic), which
is flushed and fsync'ed, renamed over the target with :func:`os.replace`, and the folder is
fsync'ed so the rename itself survives a crash. A writer killed mid-write leaves only a
temporary file named ``.<name>.<random>.tmp``, which readers never open.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
"""Suffix of the temporary files :func:`atomic_write` creates (``.<name>.<random>.tmp``)."""


def atomic_write(
    path: str | os.PathLike[str], chunks: bytes | Iterable[bytes], *, mode: int | None = None
) -> Path:
    """Write ``chunks`` to ``path`` atomically; return the path.

    Args:
        path: the target file; its folder is created when missing.
        chunks: the content, as one ``bytes`` object or an iterable of them.
        mode: permission bits of the new file (default: ``0o666`` minus the umask, as
            ``open`` would create it; ``mkstemp`` alone would make it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, _default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            for chunk in [chunks] if isinstance(chunks, bytes | bytearray) else chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """:func:`atomic_write` of indented JSON with sorted keys (non-JSON values as ``str``)."""
    text = json.dumps(dict(payload), indent=2, sort_keys=True, default=str) + "\n"
    return write_text(path, text)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Persist a folder's entries (a rename into it); best effort where not possible."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not supported for folders on every platform or file system
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    # The umask can only be read by setting it; set it straight back.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
