"""Loading preference data from files, the mirror layout and local datasets; validation."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrpo.data.preference import load_preference_data, train_val_split
from mrpo.data.types import PreferenceExample
from mrpo.data.validation import DataValidationError

HH_ROWS = [
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."},
    {
        "chosen": "\n\nHuman: 2+2?\n\nAssistant: 5?\n\nHuman: Sure?\n\nAssistant: 4.",
        "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5?\n\nHuman: Sure?\n\nAssistant: Yes.",
    },
]

UF_PROMPTS = ["Name a color.", "Say hi."]
UF_RESPONSES = [("Blue.", "Seven."), ("Hi!", "No.")]


def uf_rows(message_lists: bool) -> list[dict]:
    """UltraFeedback-binarized style rows; with message lists the responses repeat the prompt."""
    rows = []
    for prompt, (good, bad) in zip(UF_PROMPTS, UF_RESPONSES, strict=True):
        if message_lists:
            turn = {"role": "user", "content": prompt}
            chosen = [turn, {"role": "assistant", "content": good}]
            rejected = [turn, {"role": "assistant", "content": bad}]
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "score": 1})
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return rows


UF_EXPECTED = [
    PreferenceExample(({"role": "user", "content": p},), good, bad, i)
    for i, (p, (good, bad)) in enumerate(zip(UF_PROMPTS, UF_RESPONSES, strict=True))
]


def write_jsonl(path: Path, rows: list, *, raw_lines: list[str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows] if raw_lines is None else raw_lines
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    k: v if isinstance(v, str) else json.dumps(v)
                    for k, v in r.items()
                    if k in writer.fieldnames
                }
            )
    return path


@pytest.mark.parametrize("message_lists", [False, True], ids=["strings", "messages"])
@pytest.mark.parametrize(
    "fmt", ["jsonl", "jsonl.gz", "json", "json.gz", "json-lines", "json-columns", "parquet", "csv"]
)
def test_prompt_chosen_rejected_formats(tmp_path, fmt, message_lists):
    rows = uf_rows(message_lists)
    path = tmp_path / f"prefs.{fmt.split('-')[0]}"
    if fmt in ("jsonl", "jsonl.gz", "json-lines"):
        write_jsonl(path, rows)  # .json holding JSON Lines, as Dataset.to_json writes
    elif fmt in ("json", "json.gz"):
        data = json.dumps(rows, indent=2).encode()
        path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    elif fmt == "json-columns":
        path.write_text(json.dumps({k: [r[k] for r in rows] for k in rows[0]}))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        write_csv(path, rows)
    result = load_preference_data(str(path))
    assert result.examples == UF_EXPECTED
    assert result.format == "prompt_chosen_rejected"
    assert result.dropped.num_dropped == 0 and result.dropped.num_rows == 2
    assert result.source == str(path)


def test_prompt_as_message_list_with_system_turn(tmp_path):
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": prompt, "chosen": "Hey", "rejected": "Bye"}]
    )
    (ex,) = load_preference_data(str(path)).examples
    assert ex.prompt == tuple(prompt)


def test_hh_transcripts_from_jsonl_gz(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl.gz", HH_ROWS)
    result = load_preference_data(str(path))
    assert result.format == "transcripts"
    assert [(ex.chosen, ex.rejected, ex.index) for ex in result.examples] == [
        ("Hello!", "Go.", 0),
        ("4.", "Yes.", 1),
    ]
    assert [m["role"] for m in result.examples[1].prompt] == ["user", "assistant", "user"]


BAD_LINES = [
    json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}),  # line 1: valid
    "{not json",  # line 2
    json.dumps({"prompt": "p", "chosen": "a"}),  # line 3: missing rejected
    "",  # line 4: blank, skipped
    json.dumps({"prompt": "p", "chosen": "  ", "rejected": "b"}),  # line 5: empty chosen
    json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}),  # line 6
    json.dumps({"prompt": 42, "chosen": "a", "rejected": "b"}),  # line 7: not text
    json.dumps(
        {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
            "chosen": "a",
            "rejected": "b",
        }
    ),  # line 8
    json.dumps([1, 2]),  # line 9: not an object
    json.dumps({"prompt": "p2", "chosen": "c", "rejected": "d"}),  # line 10: valid
    json.dumps({"prompt": "p", "chosen": None, "rejected": "b"}),  # line 11: null = missing
]
BAD_EXPECTED = {
    "not_json": [2],
    "missing_field": [3, 11],
    "empty_response": [5],
    "identical_responses": [6],
    "not_text": [7],
    "prompt_not_user": [8],
    "not_object": [9],
}


def test_invalid_rows_raise_with_file_rows_and_reasons(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [], raw_lines=BAD_LINES)
    with pytest.raises(DataValidationError) as info:
        load_preference_data(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: 8 of 10 rows cannot be used as preference pairs:")
    assert "missing field: 2 (lines 3, 11)" in message
    assert "not valid JSON: 1 (line 2)" in message
    assert "chosen identical to rejected: 1 (line 6)" in message
    assert "prompt does not end with a user turn: 1 (line 8)" in message
    assert "line 2: not valid JSON" in message  # first rows with details
    assert "line 3: missing field(s) 'rejected'" in message
    assert "drop_invalid=True" in message
    assert info.value.source == str(path)
    assert {r: info.value.report.rows(r) for r in BAD_EXPECTED} == BAD_EXPECTED


def test_drop_invalid_reports_counts_and_keeps_row_positions(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [], raw_lines=BAD_LINES)
    result = load_preference_data(str(path), drop_invalid=True)
    assert [(ex.prompt[0]["content"], ex.index) for ex in result.examples] == [("ok", 0), ("p2", 8)]
    report = result.dropped
    assert report.num_dropped == 8 and report.num_rows == 10
    assert report.counts == {k: len(v) for k, v in BAD_EXPECTED.items()}
    assert list(report.counts) == [  # most frequent first, ties in the order rows are checked
        "missing_field",
        "not_json",
        "not_object",
        "not_text",
        "prompt_not_user",
        "empty_response",
        "identical_responses",
    ]
    summary = report.summary()
    assert summary.startswith(f"dropped 8 of 10 rows from {path}: missing field: 2 (lines 3, 11)")
    assert "\n" not in summary


def test_rows_numbered_by_array_position_in_json(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": ""},
    ]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(rows, indent=2))
    with pytest.raises(DataValidationError, match=r"empty response: 1 \(row 2\)"):
        load_preference_data(str(path))


def test_csv_rows_numbered_after_header(tmp_path):
    path = write_csv(
        tmp_path / "x.csv",
        [
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "a", "rejected": "a"},
        ],
    )
    with pytest.raises(DataValidationError, match=r"chosen identical to rejected: 1 \(row 2\)"):
        load_preference_data(str(path))


def test_no_valid_row_left(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}])
    with pytest.raises(DataValidationError, match="no valid preference pair left"):
        load_preference_data(str(path), drop_invalid=True)


def test_limit_reads_first_rows(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", uf_rows(False))
    assert load_preference_data(str(path), limit=1).examples == UF_EXPECTED[:1]
    with pytest.raises(ValueError, match="limit"):
        load_preference_data(str(path), limit=0)


# --- file-level problems -------------------------------------------------------------------


def test_file_not_found_names_every_path_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("MRPO_DATA_DIR", raising=False)
    with pytest.raises(DataValidationError) as info:
        load_preference_data("nope/train.jsonl", data_dir=str(tmp_path))
    assert "not found: 'nope/train.jsonl'" in str(info.value)
    assert str(tmp_path / "nope" / "train.jsonl") in str(info.value)
    with pytest.raises(DataValidationError, match="MRPO_DATA_DIR is not set"):
        load_preference_data(str(tmp_path / "missing.jsonl"))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "prefs.txt"
    path.write_text("hello")
    with pytest.raises(
        DataValidationError, match=r"prefs\.txt: unsupported file type; expected one of \.jsonl\.gz"
    ):
        load_preference_data(str(path))


@pytest.mark.parametrize(
    "name,content",
    [
        ("e.jsonl", b"\n\n"),
        ("e.json", b"[]"),
        ("e.csv", b"prompt,chosen,rejected\n"),
        ("e.jsonl.gz", gzip.compress(b"")),
    ],
)
def test_empty_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataValidationError, match=rf"{name}: the file is empty"):
        load_preference_data(str(tmp_path / name))


def test_truncated_gzip(tmp_path):
    data = gzip.compress(("\n".join(json.dumps(r) for r in HH_ROWS * 50)).encode())
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataValidationError, match=r"t\.jsonl\.gz: damaged or truncated gzip file"):
        load_preference_data(str(path))


def test_not_gzip(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    path.write_text('{"prompt": "p"}\n')
    with pytest.raises(DataValidationError, match="damaged or truncated gzip"):
        load_preference_data(str(path))


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
    path.write_bytes(good + b"\n" + good.replace(b'"a"', b'"caf\xe9"') + b"\n")
    with pytest.raises(
        DataValidationError, match=r"latin\.jsonl: line 2 is not UTF-8 text \(byte 0xe9\)"
    ):
        load_preference_data(str(path))


def test_unknown_format_lists_fields(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        DataValidationError,
        match=r"cannot tell the preference format from the fields \['answer', 'question'\]",
    ):
        load_preference_data(str(path))


def test_broken_json_document(tmp_path):
    path = tmp_path / "b.json"
    path.write_text('[{"prompt": "p",\n "chosen": }]')
    with pytest.raises(
        DataValidationError, match=r"b\.json: not valid JSON \(Expecting value at line 2"
    ):
        load_preference_data(str(path))


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataValidationError, match="not a readable parquet file"):
        load_preference_data(str(path))


# --- resolution: mirror layout, data_dir, local datasets -----------------------------------


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    (root / "hh-rlhf" / "harmless-base").mkdir(parents=True)
    write_jsonl(root / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", HH_ROWS)
    return root


def test_hub_id_maps_to_mirror_file(mirror, monkeypatch):
    monkeypatch.setenv("MRPO_DATA_DIR", str(mirror))
    result = load_preference_data("Anthropic/hh-rlhf", subset="harmless-base", split="test")
    assert result.source == str(mirror / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")
    assert [ex.chosen for ex in result.examples] == ["Hello!", "4."]


def test_ultrafeedback_hub_id_maps_to_mirror_parquet(tmp_path):
    folder = tmp_path / "ultrafeedback_binarized"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(uf_rows(True)), folder / "train_prefs.parquet")
    result = load_preference_data(
        "HuggingFaceH4/ultrafeedback_binarized", split="train_prefs", data_dir=str(tmp_path)
    )
    assert result.source == str(folder / "train_prefs.parquet")
    assert result.examples == UF_EXPECTED


def test_mirror_relative_path_and_data_dir_argument(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("MRPO_DATA_DIR", str(tmp_path / "elsewhere"))  # the argument wins
    result = load_preference_data("hh-rlhf/harmless-base/test.jsonl.gz", data_dir=str(mirror))
    assert len(result.examples) == 2


def test_local_folder_in_mirror_layout(mirror):
    result = load_preference_data(str(mirror / "hh-rlhf"), subset="harmless-base", split="test")
    assert result.source.endswith("test.jsonl.gz") and len(result.examples) == 2


def test_local_dataset_folder_goes_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "my-prefs"
    (folder / "data").mkdir(parents=True)
    rows = [
        *uf_rows(True),
        {"prompt": "p", "chosen": [{"role": "user", "content": "p"}], "rejected": []},
    ]
    write_jsonl(folder / "data" / "train-00000-of-00001.jsonl", rows)
    with pytest.raises(DataValidationError) as info:
        load_preference_data(str(folder), split="train")
    assert "(subset=None, split=train): 1 of 3 rows" in str(info.value)
    assert "response is not an assistant message: 1 (row 3)" in str(info.value)
    result = load_preference_data(str(folder), split="train", drop_invalid=True)
    assert result.examples == UF_EXPECTED


# --- split -----------------------------------------------------------------


def make_examples(n: int) -> list[PreferenceExample]:
    return [
        PreferenceExample(({"role": "user", "content": f"q{i}"},), f"a{i}", f"b{i}", i)
        for i in range(n)
    ]


def test_split_is_deterministic_and_partitions():
    examples = make_examples(10)
    train, val = train_val_split(examples, val_size=3, seed=0)
    # Fixed expectation: the split must not depend on the process (e.g. PYTHONHASHSEED).
    assert [ex.index for ex in val] == [0, 6, 9]
    assert [ex.index for ex in train] == [1, 2, 3, 4, 5, 7, 8]
    assert train_val_split(examples, val_size=3, seed=0) == (train, val)
    assert train_val_split(examples, val_size=3, seed=1)[1] != val
    train_f, val_f = train_val_split(examples, val_fraction=0.25, seed=5)
    assert len(val_f) == 2 and len(train_f) == 8
    assert sorted(ex.index for ex in train_f + val_f) == list(range(10))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"val_size": 2, "val_fraction": 0.1},
        {"val_size": 10},
        {"val_fraction": 1.0},
        {"val_size": -1},
    ],
)
def test_split_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        train_val_split(make_examples(10), **kwargs)
