"""Whether a model source is usable, checked before any weights load: its weight files whole
(from their headers alone), its tokenizer loading and its chat template rendering.

A safetensors file states in its header where every tensor's bytes end, and a GGUF file lists
every tensor's offset and size: a file shorter than that (a download or copy cut short) is
found here in milliseconds, before a load would fail minutes into a run.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from mrpo.errors import OptionError
from mrpo.models.loading import load_tokenizer
from mrpo.models.sources import ModelSourceError, resolve_source, source_option

_INDEX_SUFFIX = ".safetensors.index.json"
_PROBE = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]


def check_source(
    source: str, tokenizer: str | None, chat_template: str | None, cache_dir: str | Path
) -> None:
    """The weight files of ``source`` whole (:func:`check_weight_files`), its tokenizer (or
    ``tokenizer``) loading with ``chat_template`` and the template rendering a conversation.

    Raises:
        OptionError: naming ``source``, ``tokenizer`` (when given apart from the source) or
            ``chat_template``.
    """
    tokenizer_source = tokenizer or source
    with source_option("source"):
        check_weight_files(source)
    with source_option("tokenizer" if tokenizer_source != source else "source"):
        loaded = load_tokenizer(tokenizer_source, chat_template=chat_template, cache_dir=cache_dir)
    try:
        loaded.apply_chat_template(_PROBE, tokenize=False)
        loaded.apply_chat_template(_PROBE[:1], tokenize=False, add_generation_prompt=True)
    except Exception as err:  # jinja2 errors, template exceptions raised by the template
        raise OptionError(
            "chat_template", f"the chat template does not render a conversation: {err}"
        ) from None


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
