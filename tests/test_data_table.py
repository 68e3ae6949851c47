"""Pair tables (token ids in columns) and prepared, cached, parallel tokenization."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mrpo.data.prepare
from mrpo.data.prepare import prepare_pairs, resolve_num_proc, table_key
from mrpo.data.table import PairTable, concat_tables, id_lengths, pairs_fingerprint
from mrpo.data.tokenize import tokenize_pairs, truncate_columns
from mrpo.data.types import PreferenceExample, TokenizedPair
from mrpo.references.cache_entry import canonical_json
from mrpo.testing.tokenizers import make_tiny_tokenizer

PAIRS = [
    TokenizedPair((1, 2, 3), (4, 5), (6,), index=7),
    TokenizedPair((8,), (), (9, 10, 11), index=2, truncated=True),
    TokenizedPair((12, 13), (14,), (15, 16), index=5),
]


def test_a_table_reads_as_the_pairs_it_holds():
    table = PairTable.from_pairs(PAIRS)
    assert len(table) == 3 and list(table) == PAIRS and table == PAIRS
    assert table[1] == PAIRS[1] and table[-1] == PAIRS[2]
    assert table[::2] == [PAIRS[0], PAIRS[2]] and isinstance(table[::2], PairTable)
    assert table.select([2, 0]) == [PAIRS[2], PAIRS[0]]
    assert table[1:] == PAIRS[1:] and table[3:] == []
    with pytest.raises(IndexError):
        table[3]
    assert concat_tables([table[:1], table[1:]]) == PAIRS
    assert [a.tolist() for a in id_lengths(table)] == [[3, 1, 2], [2, 0, 1], [1, 3, 2]]
    assert [a.tolist() for a in id_lengths(PAIRS)] == [[3, 1, 2], [2, 0, 1], [1, 3, 2]]


def test_arrow_round_trip_keeps_rows_and_fingerprint():
    table = PairTable.from_pairs(PAIRS)
    arrow = table.to_arrow()
    assert arrow.column("prompt_ids").type == pa.large_list(pa.int32())
    assert PairTable.from_arrow(arrow) == PAIRS
    # A slice of an Arrow table (its list arrays have an offset) reads as its own rows.
    assert PairTable.from_arrow(arrow.slice(1, 2)) == PAIRS[1:]
    stored = arrow.replace_schema_metadata({b"mrpo.pairs_fingerprint": b"sha256:given"})
    assert pairs_fingerprint(PairTable.from_arrow(stored)) == "sha256:given"


def test_the_fingerprint_is_the_reference_cache_one():
    """The same value as the reference cache's canonical-JSON fingerprint of the rows, whatever
    holds them, so entries cached before pair tables existed still match."""
    digest = hashlib.sha256(b"mrpo-pairs-v1\n")
    for p in sorted(PAIRS, key=lambda p: p.index):
        row = [p.index, list(p.prompt_ids), list(p.chosen_ids), list(p.rejected_ids)]
        digest.update(canonical_json(row).encode("ascii") + b"\n")
    expected = "sha256:" + digest.hexdigest()
    assert pairs_fingerprint(PAIRS) == pairs_fingerprint(PairTable.from_pairs(PAIRS)) == expected
    assert pairs_fingerprint(PAIRS[::-1]) == expected


def scalar_truncation(p, c, r, max_length, max_prompt_length):
    """The documented rule, pair by pair (the implementation before columns)."""
    longest = max(len(c), len(r))
    if len(p) + longest <= max_length:
        return p, c, r, False, False
    if max_prompt_length is not None:
        keep = min(len(p), max_prompt_length)
    else:
        keep = min(len(p), max(max_length - longest, max_length // 2))
    budget = max_length - keep
    return p[len(p) - keep :], c[:budget], r[:budget], keep < len(p), budget < longest


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40)), max_size=8),
    st.integers(2, 50),
    st.one_of(st.none(), st.integers(1, 49)),
)
def test_truncating_columns_equals_the_rule_pair_by_pair(sizes, max_length, max_prompt_length):
    if max_prompt_length is not None and max_prompt_length >= max_length:
        max_prompt_length = None
    pairs = [
        TokenizedPair(tuple(range(p)), tuple(range(100, 100 + c)), tuple(range(200, 200 + r)), i)
        for i, (p, c, r) in enumerate(sizes)
    ]
    table = PairTable.from_pairs(pairs)
    cut, prompt_cut, responses_cut = truncate_columns(
        table.columns, max_length=max_length, max_prompt_length=max_prompt_length
    )
    got = PairTable(table.indices, prompt_cut | responses_cut, cut)
    for i, pair in enumerate(pairs):
        p, c, r, p_cut, r_cut = scalar_truncation(
            pair.prompt_ids, pair.chosen_ids, pair.rejected_ids, max_length, max_prompt_length
        )
        assert got[i] == TokenizedPair(p, c, r, i, p_cut or r_cut)
        assert (bool(prompt_cut[i]), bool(responses_cut[i])) == (p_cut, r_cut)


def examples(n: int, salt: str = "") -> list[PreferenceExample]:
    return [
        PreferenceExample(
            ({"role": "user", "content": f"Question {i}{salt}: how do kites fly? " * (1 + i % 3)},),
            f"With wind and a string ({i}).",
            f"Magic {i}.",
            index=i,
        )
        for i in range(n)
    ]


OPTIONS = {"max_length": 40, "max_prompt_length": 20}


def test_prepared_pairs_are_stored_and_read_back(tmp_path, monkeypatch):
    tok = make_tiny_tokenizer("chatml")
    rows = examples(30)
    plain = tokenize_pairs(rows, tok, **OPTIONS)
    assert plain.num_truncated > 0  # the limits cut some pairs
    first = prepare_pairs(rows, tok, **OPTIONS, cache_dir=tmp_path, num_proc=1)
    stored = list(tmp_path.glob("*.arrow"))
    assert len(stored) == 1 and first.pairs == plain.pairs
    assert (first.num_truncated, first.num_prompt_truncated, first.num_response_truncated) == (
        plain.num_truncated,
        plain.num_prompt_truncated,
        plain.num_response_truncated,
    )

    def fail(*args, **kwargs):
        raise AssertionError("a second run must read the stored table")

    monkeypatch.setattr(mrpo.data.prepare, "tokenize_pairs", fail)
    second = prepare_pairs(rows, tok, **OPTIONS, cache_dir=tmp_path, num_proc=1)
    assert second.pairs == plain.pairs and second.num_truncated == plain.num_truncated
    assert pairs_fingerprint(second.pairs) == pairs_fingerprint(plain.pairs)
    # Anything that changes the ids changes the key: the text, the tokenizer, the template
    # options, the limits.
    key = table_key(rows, tok, {**OPTIONS, "system_prompt": None, "chat_template": None})
    assert stored[0].name == f"{key}.arrow"
    variants = [
        (examples(30, salt="!"), tok, OPTIONS, None),
        (rows, make_tiny_tokenizer("zephyr"), OPTIONS, None),
        (rows, tok, {**OPTIONS, "max_length": 41}, None),
        (rows, tok, OPTIONS, "Be brief."),
    ]
    keys = {
        table_key(r, t, {**o, "system_prompt": s, "chat_template": None}) for r, t, o, s in variants
    }
    assert len(keys) == 4 and key not in keys


def test_a_damaged_table_is_tokenized_again(tmp_path):
    tok = make_tiny_tokenizer("chatml")
    rows = examples(5)
    prepare_pairs(rows, tok, **OPTIONS, cache_dir=tmp_path, num_proc=1)
    (stored,) = tmp_path.glob("*.arrow")
    stored.write_bytes(stored.read_bytes()[:50])
    again = prepare_pairs(rows, tok, **OPTIONS, cache_dir=tmp_path, num_proc=1)
    assert again.pairs == tokenize_pairs(rows, tok, **OPTIONS).pairs
    assert stored.stat().st_size > 50


def test_processes_tokenize_the_same_pairs(tmp_path):
    tok = make_tiny_tokenizer("zephyr")
    rows = examples(40)
    one = tokenize_pairs(rows, tok, **OPTIONS, system_prompt="Be brief.")
    two = prepare_pairs(rows, tok, **OPTIONS, system_prompt="Be brief.", num_proc=2)
    assert two.pairs == one.pairs and two.num_truncated == one.num_truncated
    stored = prepare_pairs(
        rows, tok, **OPTIONS, system_prompt="Be brief.", num_proc=2, cache_dir=tmp_path
    )
    assert stored.pairs == one.pairs
    assert [p.name for p in tmp_path.iterdir()] == [f"{stored_key(rows, tok)}.arrow"]


def stored_key(rows, tok) -> str:
    return table_key(rows, tok, {**OPTIONS, "system_prompt": "Be brief.", "chat_template": None})


def test_resolve_num_proc(monkeypatch):
    assert resolve_num_proc(3, 10) == 3
    assert resolve_num_proc(None, 10) == 1  # too few pairs to pay for a process
    monkeypatch.setattr(
        mrpo.data.prepare.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False
    )
    assert resolve_num_proc(None, 10**6) == 2
    with pytest.raises(ValueError, match="num_proc"):
        resolve_num_proc(0, 10)


def test_an_empty_list_tokenizes_to_an_empty_table(tmp_path: Path):
    tok = make_tiny_tokenizer("chatml")
    empty = prepare_pairs([], tok, **OPTIONS, cache_dir=tmp_path)
    assert len(empty.pairs) == 0 and empty.num_truncated == 0
    assert isinstance(empty.pairs, PairTable) and np.asarray(empty.pairs.indices).size == 0
