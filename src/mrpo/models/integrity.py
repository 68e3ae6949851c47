"""Whether a model source's weight files are whole, checked from their headers alone.

A safetensors file states in its header where every tensor's bytes end, and a GGUF file lists
every tensor's offset and size: a file shorter than that (a download or copy cut short) is
found here in milliseconds, before a load would fail minutes into a run. Nothing is loaded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from mrpo.models.sources import ModelSourceError, resolve_source

_INDEX_SUFFIX = ".safetensors.index.json"


def check_weight_files(source: str) -> None:
    """Check the weight files of a GGUF file or a local model directory (hub ids: nothing).

    Raises:
        ModelSourceError: naming the file that is truncated, unreadable or missing.
    """
    resolved = resolve_source(source)
    if resolved.kind == "gguf":
        check_gguf(Path(resolved.location))
    elif resolved.kind == "local":
        folder = Path(resolved.location)
        for path in sorted(folder.glob("*.safetensors")):
            check_safetensors(path)
        for index in folder.glob(f"*{_INDEX_SUFFIX}"):
            _check_index(index)


def check_safetensors(path: Path) -> None:
    """The file is as long as its header says (8-byte length, JSON header, tensor bytes)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelSourceError(f"{path}: truncated safetensors file ({size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise ModelSourceError(f"{path}: truncated safetensors file (header cut short)")
            header = json.loads(f.read(length))
    except OSError as err:
        raise ModelSourceError(f"{path}: cannot read ({err.strerror or err})") from None
    except ValueError as err:
        raise ModelSourceError(f"{path}: not a safetensors file ({err})") from None
    ends = [
        int(info["data_offsets"][1])
        for name, info in header.items()
        if name != "__metadata__" and isinstance(info, dict) and "data_offsets" in info
    ]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise ModelSourceError(
            f"{path}: truncated safetensors file ({size} of {expected} bytes); download or "
            "copy it again"
        )


def check_gguf(path: Path) -> None:
    """The file parses as GGUF and holds every tensor its header lists."""
    from gguf import GGUFReader

    try:
        size = path.stat().st_size
        reader = GGUFReader(path)
        ends = [int(t.data_offset) + int(t.n_bytes) for t in reader.tensors]
    except OSError as err:
        raise ModelSourceError(f"{path}: cannot read ({err.strerror or err})") from None
    except Exception as err:  # the reader raises ValueError/IndexError on a cut-short file
        raise ModelSourceError(f"{path}: not a complete GGUF file ({err})") from None
    expected = max(ends, default=0)
    if size < expected:
        raise ModelSourceError(
            f"{path}: truncated GGUF file ({size} of {expected} bytes); download or copy it again"
        )


def _check_index(index: Path) -> None:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"{index}: unreadable index ({err})") from None
    for shard in sorted(set(weight_map.values())):
        if not (index.parent / shard).is_file():
            raise ModelSourceError(f"{index} names the shard {shard}, which is missing")
