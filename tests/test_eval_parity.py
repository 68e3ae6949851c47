"""mrpo's own GSM8K and TruthfulQA scoring equals lm-evaluation-harness's, item by item.

In one process, on the packaged SmolLM2-135M-Instruct and the first questions of the local
data mirror, mrpo's tasks and lm-eval's own (``gsm8k``, ``truthfulqa_mc1``, ``truthfulqa_mc2``,
run by ``lm_eval.simple_evaluate`` at its default batch size of 1) must agree on every item:
the same prompts and requests, the same GSM8K generations, extracted answers and exact-match
outcomes, the same MC1 outcome and MC2 within 1e-4. CI installs lm-eval (the dev extra) and
lays the mirror next to the checkout; the test skips only outside CI without the mirror.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.parity import compare_run, run_parity

pytestmark = pytest.mark.slow

MIRROR = Path(os.environ.get("MRPO_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))
GSM8K_QUESTIONS = 5
TRUTHFULQA_QUESTIONS = 40


@pytest.mark.skipif(
    not (MIRROR / "gsm8k").is_dir() and not os.environ.get("CI"),
    reason="local data mirror not available (CI always has it)",
)
def test_native_scoring_equals_lm_eval_per_item() -> None:
    from mrpo.models import load_model, load_tokenizer

    model = load_model("packaged:smollm2-135m-instruct", trainable=False)
    tokenizer = load_tokenizer("packaged:smollm2-135m-instruct")
    limits = {"gsm8k": GSM8K_QUESTIONS, "truthfulqa": TRUTHFULQA_QUESTIONS}
    run = run_parity(model, tokenizer, limits, data_dir=MIRROR)
    found = compare_run(run, MIRROR)

    gsm8k, tqa = found["gsm8k"], found["truthfulqa"]
    assert gsm8k.items == GSM8K_QUESTIONS and tqa.items == TRUTHFULQA_QUESTIONS
    assert gsm8k.prompts == [] and gsm8k.generations == []
    assert gsm8k.answers == [] and gsm8k.scores == []
    assert tqa.requests == [] and tqa.mc1 == [] and tqa.mc2 == []
    assert tqa.max_mc2_diff <= 1e-4
    # The aggregate scores follow; lm-eval's are its own means over the same items.
    native = run.native["truthfulqa"].result.metrics
    lm = {n: t.result.metrics["acc"] for n, t in run.lm_eval["truthfulqa"].items()}
    assert native["mc1"] == pytest.approx(lm["truthfulqa_mc1"], abs=1e-12)
    assert native["mc2"] == pytest.approx(lm["truthfulqa_mc2"], abs=1e-4)
    gsm = run.lm_eval["gsm8k"]["gsm8k"].result.metrics
    assert run.native["gsm8k"].result.metrics == pytest.approx(
        {"strict_match": gsm["exact_match_strict_match"],
         "flexible_extract": gsm["exact_match_flexible_extract"]}
    )  # fmt: skip
