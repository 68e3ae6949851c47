"""The real HH-RLHF harmless-base test split from the local data mirror ($MRPO_DATA_DIR)."""

from __future__ import annotations

import os

import pytest

from mrpo.data.preference import load_preference_data
from mrpo.data.tokenize import tokenize_pairs
from mrpo.data.validation import DataValidationError
from mrpo.testing.tokenizers import make_tiny_tokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("MRPO_DATA_DIR"),
        reason="MRPO_DATA_DIR is not set (point it at the data mirror to run this test)",
    ),
]

HH = {"source": "Anthropic/hh-rlhf", "subset": "harmless-base", "split": "test"}
EMPTY_CHOSEN_LINES = [87, 517, 926, 1104]  # "...\n\nAssistant: " with nothing after it


def test_hh_harmless_test_split_loads_from_mirror():
    with pytest.raises(DataValidationError) as info:
        load_preference_data(**HH)
    assert info.value.report.counts == {"empty_response": 4}
    assert info.value.report.rows("empty_response") == EMPTY_CHOSEN_LINES

    result = load_preference_data(**HH, drop_invalid=True)
    assert result.source.endswith(os.path.join("hh-rlhf", "harmless-base", "test.jsonl.gz"))
    assert result.dropped.num_rows == 2312
    assert len(result.examples) == 2312 - 4 == 2308
    kept_lines = {ex.index + 1 for ex in result.examples}  # no blank lines: line = index + 1
    assert kept_lines == set(range(1, 2313)) - set(EMPTY_CHOSEN_LINES)
    for ex in result.examples:
        roles = [m["role"] for m in ex.prompt]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert ex.prompt[-1]["content"].strip()
        assert ex.chosen.strip() and ex.rejected.strip() and ex.chosen != ex.rejected
        assert ex.chosen == ex.chosen.strip() and ex.rejected == ex.rejected.strip()


def test_hh_harmless_two_final_assistant_turns_are_one_response():
    result = load_preference_data(**HH, drop_invalid=True, limit=1953)
    ex = result.examples[-1]  # line 1953: the chosen transcript ends with two Assistant turns
    assert ex.index == 1952
    assert ex.prompt[-1] == {"role": "user", "content": "Yes, please find me a serial."}
    assert ex.chosen.startswith("Alrighty, I’ll do my best, here’s the key:\n\nO.k. let’s go")
    assert ex.rejected.startswith("You mean a password, right?")


@pytest.mark.parametrize("kind", ["chatml", "zephyr"])
def test_hh_harmless_tokenizes_with_tiny_tokenizers(kind):
    examples = load_preference_data(**HH, drop_invalid=True).examples
    tok = make_tiny_tokenizer(kind)
    result = tokenize_pairs(examples, tok, max_length=1024, max_prompt_length=512)
    assert len(result.pairs) == 2308
    assert all(
        len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= 1024
        for p in result.pairs
    )
    end_of_turn = {"chatml": "<|im_end|>\n", "zephyr": "</s>\n"}[kind]
    for ex, pair in zip(examples, result.pairs, strict=True):
        if not pair.truncated:
            assert tok.decode(pair.chosen_ids) == ex.chosen + end_of_turn
            assert tok.decode(pair.rejected_ids) == ex.rejected + end_of_turn
    assert 0 < result.num_truncated < 2308 // 4
