"""The one atomic file writer: every result file (cache entries, summaries, eval results)
goes through :func:`atomic_write`.

A reader sees either the old file or the complete new one, never a partial file: the bytes go
to a temporary file in the target's folder (same file system, so the rename is atomic), which
is flushed and fsync'ed, renamed over the target with :func:`os.replace`, and the folder is
fsync'ed so the rename itself survives a crash. A writer killed mid-write leaves only a
temporary file named ``.<name>.<random>.tmp``, which readers never open.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mrpo.errors import OptionError

TMP_SUFFIX = ".tmp"
"""Suffix of the temporary files :func:`atomic_write` creates (``.<name>.<random>.tmp``)."""


@contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` atomically when the ``with`` block ends.

    The bytes written go to a temporary file beside ``path``; on a clean exit it is flushed,
    fsync'ed and renamed over ``path`` (then the folder is fsync'ed); on an exception it is
    deleted and ``path`` is left as it was.

    Args:
        path: the target file; its folder is created when missing.
        mode: permission bits of the new file (default: ``0o666`` minus the umask, as
            ``open`` would create it; ``mkstemp`` alone would make it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(
    path: str | os.PathLike[str], chunks: bytes | Iterable[bytes], *, mode: int | None = None
) -> Path:
    """Write ``chunks`` (one ``bytes`` object or an iterable of them) to ``path`` atomically
    (:func:`atomic_writer`); return the path."""
    with atomic_writer(path, mode=mode) as f:
        for chunk in [chunks] if isinstance(chunks, bytes | bytearray) else chunks:
            f.write(chunk)
    return Path(path)


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


@functools.cache
def process_umask() -> int:
    """The process's umask (read once; setting it back at once is the only portable way)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_mode() -> int:
    """The permission bits ``open`` gives a new file: ``0o666`` minus the umask."""
    return 0o666 & ~process_umask()


def check_writable(folder: Path, option: str) -> None:
    """Create ``folder`` if needed and write a probe file into it (else an
    :class:`~mrpo.errors.OptionError` for ``option``)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mrpo-write-probe-"):
            pass
    except OSError as err:
        raise OptionError(option, f"{folder} is not writable ({err.strerror or err})") from None
