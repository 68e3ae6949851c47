"""The named preference sets: each config reads its set's own layout, from the hub id or, offline,
from the mirror file ``$MRPO_DATA_DIR/<name>/<split>.jsonl`` (fixtures written here, in each
set's published field layout); the ``ranked_answers`` format and the column mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrpo.data.formats import normalize_row
from mrpo.data.preference import load_preference_data
from mrpo.data.sources import resolve_source
from mrpo.data.validation import RowError
from mrpo.testing.configs import compose_config

USER, ANSWER, WORSE = "What is 2 + 3?", "2 + 3 = 5.", "It is 23."


def conversation(reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": USER}, {"role": "assistant", "content": reply}]


# One row per set in its published layout, and where the mirror keeps it.
ROWS = {
    "ultrafeedback": (
        "ultrafeedback_binarized/train_prefs.jsonl",
        {
            "prompt": USER,
            "prompt_id": "x",
            "chosen": conversation(ANSWER),
            "rejected": conversation(WORSE),
            "messages": conversation(ANSWER),
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        },
    ),
    "helpsteer": (
        "Helpsteer-preference-standard/train.jsonl",
        {"chosen": conversation(ANSWER), "rejected": conversation(WORSE)},
    ),
    "safe_rlhf": (
        "PKU-SafeRLHF-30K-standard/train.jsonl",
        {"chosen": conversation(ANSWER), "rejected": conversation(WORSE)},
    ),
    "nectar": (
        "Nectar/train.jsonl",
        {
            "prompt": f"\n\nHuman: {USER}\n\nAssistant:",
            "answers": [
                {"answer": "Five, I think.", "model": "m1", "rank": 2.0},
                {"answer": ANSWER, "model": "m2", "rank": 1.0},
                {"answer": WORSE, "model": "m3", "rank": 3.0},
            ],
            "turns": 1,
            "num_responses": 3,
            "source": ["sharegpt"],
            "good_natured": True,
        },
    ),
    "distilabel_math": (
        "distilabel-math-preference-dpo/train.jsonl",
        {
            "metadata": "{}",
            "instruction": USER,
            "chosen_response": ANSWER,
            "chosen_rating": 9.0,
            "rejected_response": WORSE,
            "rejected_rating": 4.0,
        },
    ),
}


def load_as_configured(name: str, mirror: Path | None) -> object:
    cfg = compose_config([f"data={name}", "paths.output_dir=/tmp/unused"]).data
    kwargs = {"split": cfg.split, "subset": cfg.subset, "format": cfg.format}
    columns = dict(cfg.columns) or None
    return load_preference_data(
        cfg.source, **kwargs, columns=columns, data_dir=str(mirror) if mirror else None
    )


@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_set_reads_its_own_layout_from_the_mirror(name: str, tmp_path: Path) -> None:
    relative, row = ROWS[name]
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(row) + "\n")
    loaded = load_as_configured(name, tmp_path)
    assert loaded.source == str(path)
    [example] = loaded.examples
    assert example.prompt == ({"role": "user", "content": USER},)
    assert (example.chosen, example.rejected) == (ANSWER, WORSE)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_without_a_mirror_file_each_set_comes_from_the_hub(name: str, tmp_path: Path) -> None:
    cfg = compose_config([f"data={name}", "paths.output_dir=/tmp/unused"]).data
    where = {"split": cfg.split, "subset": cfg.subset, "data_dir": str(tmp_path)}
    resolved = resolve_source(cfg.source, **where)
    assert (resolved.kind, resolved.location) == ("hub", cfg.source)
    relative, _ = ROWS[name]
    assert str(tmp_path / relative.split("/")[0]) in " ".join(resolved.tried)


def test_ranked_answers_pair_the_best_rank_with_the_worst() -> None:
    row = {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "answers": [
            {"answer": "b", "rank": 2},
            {"answer": "first worst", "rank": 4},
            {"answer": "a", "rank": 1},
            {"answer": "second worst", "rank": 4},
        ],
    }
    example = normalize_row(row, "ranked_answers", 5)
    assert (example.chosen, example.rejected, example.index) == ("a", "first worst", 5)


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ([{"answer": "only", "rank": 1}], "missing_field"),
        ([{"answer": "x", "rank": 1}, {"answer": "y", "rank": 1}], "identical_responses"),
        ([{"answer": "x", "rank": 1}, {"text": "y", "rank": 2}], "not_text"),
        ([{"answer": "x", "rank": 1}, {"answer": "y", "rank": "2"}], "not_text"),
    ],
)
def test_ranked_answers_refuse_rows_without_a_pair(answers: list, reason: str) -> None:
    with pytest.raises(RowError) as info:
        normalize_row({"prompt": "Hi?", "answers": answers}, "ranked_answers", 0)
    assert info.value.reason == reason


def test_the_ranked_format_is_detected_from_its_fields(tmp_path: Path) -> None:
    path = tmp_path / "nectar.jsonl"
    path.write_text(json.dumps(ROWS["nectar"][1]) + "\n")
    assert load_preference_data(str(path)).format == "ranked_answers"


def test_columns_rename_fields_before_the_format_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps(ROWS["distilabel_math"][1]) + "\n")
    columns = {"instruction": "prompt", "chosen_response": "chosen"}
    columns["rejected_response"] = "rejected"
    loaded = load_preference_data(str(path), columns=columns)
    assert loaded.format == "prompt_chosen_rejected"
    assert loaded.examples[0].chosen == ANSWER
    # Without the mapping the fields name no format.
    with pytest.raises(ValueError, match="cannot tell the preference format"):
        load_preference_data(str(path))
