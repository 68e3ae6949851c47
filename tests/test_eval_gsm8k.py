"""GSM8K as lm-evaluation-harness: answer extraction, exact match, few-shot prompts, sampler."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from mrpo.evals.gsm8k import (
    build_prompts,
    chat_prompt,
    extract_flexible,
    extract_strict,
    fewshot_draws,
    score_generations,
)
from mrpo.evals.gsm8k.loader import load_gsm8k
from mrpo.evals.gsm8k.metric import exact_match_scores
from mrpo.evals.gsm8k.records import GSM8KRecord
from mrpo.evals.sources import load_metric
from mrpo.testing.tokenizers import make_tiny_tokenizer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 + 2 = 5\n#### 5", "5"),
        ("#### 1,234.\nQuestion", "1,234."),
        ("#### -7 and later #### 9", "-7"),  # first match
        ("#### $5", "[invalid]"),  # "$" is not in the strict class
        ("####5", "[invalid]"),  # the marker needs its space
        ("The answer is 5.", "[invalid]"),
    ],
)
def test_strict_match(text: str, expected: str) -> None:
    assert extract_strict(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 apples and 12 pears", "12"),  # last match
        ("It costs $1,000.", "$1,000."),
        ("so the answer is 7", "7"),  # single digit: second alternative
        ("went down to -3 degrees", "-3"),
        ("first 10, then -25.5 at last", "-25.5"),
        ("no numbers here", "[invalid]"),
        ("I think so...", "..."),  # the harness pattern also matches runs of dots
    ],
)
def test_flexible_extract(text: str, expected: str) -> None:
    assert extract_flexible(text) == expected


def test_exact_match_module_loaded_with_evaluate() -> None:
    gold = "She makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"
    predictions = ["1,018", "$1018.", "1018.0", "[invalid]", "1018\n"]
    # "1018\n": `\.$` does not apply and the newline stays, as in the harness.
    expected = [1.0, 1.0, 0.0, 0.0, 0.0]
    metric = load_metric("gsm8k")
    out = metric.compute(predictions=predictions, references=[gold] * 5, return_scores=True)
    assert out["scores"] == expected
    assert out["exact_match"] == pytest.approx(0.4)
    assert exact_match_scores(predictions, [gold] * 5) == expected
    # Case is ignored; punctuation is not (unless asked).
    assert exact_match_scores(["ABC"], ["abc"]) == [1.0]
    assert exact_match_scores(["a-b"], ["ab"]) == [0.0]
    assert exact_match_scores(["a-b"], ["ab"], ignore_punctuation=True) == [1.0]
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("bleu")


def records(n: int, prefix: str) -> list[GSM8KRecord]:
    return [
        GSM8KRecord(f"{prefix} question {i}?", f"Work {i}.\n#### {i}", str(i), i) for i in range(n)
    ]


def test_fewshot_draws_match_the_harness_sampler() -> None:
    # The harness: one random.Random(1234), and `rnd.sample(train_docs, k)` per question.
    docs = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(50)]
    rnd = random.Random(1234)
    harness = [rnd.sample(docs, 5) for _ in range(4)]
    ours = fewshot_draws(4, len(docs), k=5, seed=1234)
    assert [[docs[j] for j in draw] for draw in ours] == harness
    assert fewshot_draws(2, 6) == [[3, 0, 4, 5, 2], [5, 0, 4, 1, 3]]


def test_fewshot_prompt_text_exactly() -> None:
    train, test = records(6, "Train"), records(3, "Test")
    prompts = build_prompts(test, train)
    shots = "".join(
        f"Question: Train question {j}?\nAnswer: Work {j}.\n#### {j}\n\n" for j in [3, 0, 4, 5, 2]
    )
    assert prompts[0] == shots + "Question: Test question 0?\nAnswer:"
    assert prompts[1].startswith("Question: Train question 5?\nAnswer: Work 5.\n#### 5\n\n")
    # A limited run (first n questions) and a single later question see the same prompts.
    assert build_prompts(test[:2], train) == prompts[:2]
    assert build_prompts(test[2:], train) == prompts[2:]
    assert build_prompts(test[:1], train, num_fewshot=0) == ["Question: Test question 0?\nAnswer:"]


def test_chat_prompt_uses_the_chat_template() -> None:
    tokenizer = make_tiny_tokenizer("chatml")
    assert chat_prompt(tokenizer, "What is 2+2?") == (
        "<|im_start|>user\nQuestion: What is 2+2?\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    )
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        chat_prompt(tokenizer, "q")


def test_score_generations() -> None:
    test = records(4, "Test")  # gold answers 0, 1, 2, 3
    generations = [
        "Work.\n#### 0",  # both right
        "I get 1, so #### 2",  # strict wrong (2), flexible wrong (last number 2)
        "It is 2.",  # strict invalid, flexible right ("2." -> "2")
        "#### 3\n\nThen 7",  # strict right, flexible wrong (7)
    ]
    metrics, samples = score_generations(generations, test)
    assert metrics == {"strict_match": 0.5, "flexible_extract": 0.5}
    assert [s["strict_match"] for s in samples] == ["0", "2", "[invalid]", "3"]
    assert [s["flexible_extract_correct"] for s in samples] == [True, False, True, False]
    assert samples[2]["generation"] == "It is 2." and samples[2]["gold"] == "2"


MIRROR = Path(os.environ.get("MRPO_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))


@pytest.mark.slow
@pytest.mark.skipif(not (MIRROR / "gsm8k").is_dir(), reason="local data mirror not available")
def test_first_real_prompt_matches_the_harness() -> None:
    """The harness's 5-shot prompt of test question 0 uses train rows 6374, 3610, 957, 61, 742.

    (Those are the examples of the gsm8k prompts the harness renders for doc 0, e.g. the one
    starting "Question: Jen and Tyler are gymnasts practicing flips.")
    """
    test, train = load_gsm8k("test", data_dir=MIRROR), load_gsm8k("train", data_dir=MIRROR)
    prompt = build_prompts(test[:1], train)[0]
    expected = "".join(
        f"Question: {train[j].question}\nAnswer: {train[j].answer}\n\n"
        for j in [6374, 3610, 957, 61, 742]
    )
    assert prompt == expected + f"Question: {test[0].question}\nAnswer:"
    assert prompt.startswith("Question: Jen and Tyler are gymnasts practicing flips.")
