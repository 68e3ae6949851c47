"""Tokenized pairs prepared once, in parallel, and kept on disk: :func:`prepare_pairs`.

:func:`~mrpo.data.tokenize.tokenize_pairs` renders and tokenizes in one process. For a large
data set :func:`prepare_pairs` splits the work over ``num_proc`` processes with
``datasets.Dataset.map(batched=True, num_proc=...)`` and stores the result, a
:class:`~mrpo.data.table.PairTable`, as an Arrow file in ``cache_dir`` under a key of
everything that determines it: the text of every pair (index, prompt messages, responses), the
tokenizer (:func:`tokenizer_fingerprint`), the chat template, the system prompt, the length
limits and the truncation rule. A later run with the same data and tokenizer memory-maps that
file instead of tokenizing again: its token ids cost no time and (until read) no memory. The
file is written atomically (:func:`mrpo.atomic.atomic_write`); a damaged one is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from transformers import PreTrainedTokenizerBase

from mrpo.atomic import atomic_write
from mrpo.data.table import FINGERPRINT_METADATA, PairTable, pairs_fingerprint
from mrpo.data.tokenize import TokenizedPairs, tokenize_pairs
from mrpo.data.types import PreferenceExample

log = logging.getLogger("mrpo.data")

FORMAT_VERSION = "mrpo-pair-table-v1"
"""Part of every key: bump it when the table's layout or the tokenization rules change."""

PAIRS_PER_PROCESS = 5000
"""With ``num_proc=None``, a process is added per this many pairs (up to the CPU count):
below it, starting a process costs more than it saves."""

# Runtime settings of a fast tokenizer's JSON that change when a caller pads or truncates a
# call; they do not change how text maps to ids, so they are left out of its identity.
_RUNTIME_TOKENIZER_FIELDS = ("padding", "truncation")


_FINGERPRINTS: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, str] = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A sha256 of how a tokenizer maps text to ids (its vocabulary, merges, special tokens).

    Fast tokenizers are hashed through their serialized ``tokenizers`` JSON (minus the
    runtime padding/truncation settings); slow ones through their sorted vocabulary. The class
    name and the special-token map are included too. The chat template is keyed separately.
    Computed once per tokenizer object (serializing a large vocabulary takes a while).
    """
    if tokenizer not in _FINGERPRINTS:
        _FINGERPRINTS[tokenizer] = _tokenizer_digest(tokenizer)
    return _FINGERPRINTS[tokenizer]


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for name in _RUNTIME_TOKENIZER_FIELDS:
            spec.pop(name, None)
        digest.update(_canonical(spec))
    else:
        digest.update(_canonical(sorted(tokenizer.get_vocab().items())))
    specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    digest.update(_canonical(specials))
    return "sha256:" + digest.hexdigest()


def _canonical(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, no whitespace, ASCII), as the reference cache keys use."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def resolve_num_proc(num_proc: int | None, num_pairs: int) -> int:
    """Processes to tokenize ``num_pairs`` with: ``num_proc``, or (None) one per
    :data:`PAIRS_PER_PROCESS` pairs up to the usable CPUs."""
    if num_proc is not None:
        if num_proc < 1:
            raise ValueError(f"num_proc must be >= 1 or None, got {num_proc}")
        return num_proc
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, num_pairs // PAIRS_PER_PROCESS))


def prepare_pairs(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
    chat_template: str | None = None,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
) -> TokenizedPairs:
    """:func:`~mrpo.data.tokenize.tokenize_pairs`, in parallel and cached (module doc).

    Args:
        examples, tokenizer, max_length, max_prompt_length, system_prompt, chat_template: as
            in :func:`~mrpo.data.tokenize.tokenize_pairs`, whose result this equals.
        cache_dir: folder of the prepared tables; None: nothing is read or written.
        num_proc: processes to tokenize with (None: :func:`resolve_num_proc`).

    Returns:
        The :class:`TokenizedPairs`; their ``pairs`` are memory-mapped from the cache file
        when ``cache_dir`` is given.
    """
    options = {
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "system_prompt": system_prompt,
        "chat_template": chat_template,
    }
    procs = resolve_num_proc(num_proc, len(examples))
    if cache_dir is None:
        return _tokenize(examples, tokenizer, options, procs, None)
    path = Path(cache_dir) / f"{table_key(examples, tokenizer, options)}.arrow"
    cached = _read(path)
    if cached is not None:
        log.info("prepared pairs: read %d rows from %s", len(cached.pairs), path)
        return cached
    result = _tokenize(examples, tokenizer, options, procs, Path(cache_dir))
    _write(path, result)
    log.info("prepared pairs: tokenized %d rows (%d processes) into %s", len(examples), procs, path)
    return _read(path) or result


def table_key(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    options: dict[str, Any],
) -> str:
    """Hex sha256 of everything that determines a prepared table (module doc)."""
    template = options["chat_template"] or tokenizer.chat_template
    digest = hashlib.sha256(FORMAT_VERSION.encode() + b"\n")
    digest.update(_canonical({**options, "chat_template": template}) + b"\n")
    digest.update(tokenizer_fingerprint(tokenizer).encode() + b"\n")
    for ex in examples:
        digest.update(_canonical([ex.index, list(ex.prompt), ex.chosen, ex.rejected]) + b"\n")
    return digest.hexdigest()


def _tokenize(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    options: dict[str, Any],
    procs: int,
    scratch: Path | None,
) -> TokenizedPairs:
    """Tokenize in this process, or in ``procs`` by ``Dataset.map`` (shards in ``scratch``)."""
    if procs <= 1:
        return tokenize_pairs(examples, tokenizer, **options)
    import datasets

    rows = datasets.Dataset.from_dict(
        {
            "index": [ex.index for ex in examples],
            "prompt": [json.dumps(list(ex.prompt)) for ex in examples],
            "chosen": [ex.chosen for ex in examples],
            "rejected": [ex.rejected for ex in examples],
        }
    )
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mrpo-prepare-", dir=scratch) as tmp:
        mapped = rows.map(
            _tokenize_batch,
            batched=True,
            batch_size=1000,
            num_proc=procs,
            remove_columns=rows.column_names,
            fn_kwargs={"tokenizer": tokenizer, "options": options},
            cache_file_name=str(Path(tmp) / "shard.arrow"),
            new_fingerprint=hashlib.sha256(tmp.encode()).hexdigest()[:16],
            desc="tokenizing pairs",
        )
        table = mapped.data.table.combine_chunks()  # read into memory before tmp goes
    return _from_arrow(table)


def _tokenize_batch(
    batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, options: dict[str, Any]
) -> pa.Table:
    """``Dataset.map`` function: a batch of pair texts to the columns of their table."""
    examples = [
        PreferenceExample(tuple(json.loads(p)), c, r, i)
        for i, p, c, r in zip(
            batch["index"], batch["prompt"], batch["chosen"], batch["rejected"], strict=True
        )
    ]
    return _to_arrow(tokenize_pairs(examples, tokenizer, **options))


def _to_arrow(result: TokenizedPairs) -> pa.Table:
    """The table's columns and each pair's cut flags (so that the counts come back too)."""
    pairs = result.pairs
    table = pairs if isinstance(pairs, PairTable) else PairTable.from_pairs(pairs)
    if result.cut_flags is None:
        raise ValueError("tokenized pairs without their cut flags cannot be stored")
    prompt_cut, responses_cut = result.cut_flags
    arrow = table.to_arrow().append_column("prompt_cut", pa.array(prompt_cut))
    return arrow.append_column("responses_cut", pa.array(responses_cut))


def _from_arrow(table: pa.Table) -> TokenizedPairs:
    prompt_cut = table.column("prompt_cut").to_numpy(zero_copy_only=False)
    responses_cut = table.column("responses_cut").to_numpy(zero_copy_only=False)
    pairs = PairTable.from_arrow(table)
    return TokenizedPairs(
        pairs=pairs,
        num_truncated=int(pairs.truncated.sum()),
        num_prompt_truncated=int(prompt_cut.sum()),
        num_response_truncated=int(responses_cut.sum()),
        cut_flags=(prompt_cut, responses_cut),
    )


def _write(path: Path, result: TokenizedPairs) -> None:
    sink = pa.BufferOutputStream()
    table = _to_arrow(result)
    # The reference cache keys need the fingerprint, a pass over every token: stored with it.
    table = table.replace_schema_metadata({FINGERPRINT_METADATA: pairs_fingerprint(result.pairs)})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    atomic_write(path, sink.getvalue().to_pybytes())


def _read(path: Path) -> TokenizedPairs | None:
    """The table stored at ``path`` (memory-mapped), or None when missing or unreadable."""
    if not path.exists():
        return None
    try:
        # The table's buffers point into the mapping, which stays open while they live.
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        return _from_arrow(table)
    except (pa.ArrowException, KeyError, ValueError, OSError) as err:
        log.warning("prepared pairs: %s is unreadable (%s); tokenizing again", path, err)
        path.unlink(missing_ok=True)
        return None
