"""mrpo's own GSM8K and TruthfulQA scoring next to lm-evaluation-harness's, item by item.

:func:`run_parity` runs, in one process on one model and on the same first questions of the
local data mirror, mrpo's tasks (``gsm8k``, ``truthfulqa``) and lm-eval's (``gsm8k``,
``truthfulqa_mc1``, ``truthfulqa_mc2``: lm-eval's own task configs, reading the mirror through
the shipped overrides), timing each; :func:`compare_gsm8k` and :func:`compare_truthfulqa`
list every item whose prompt, generation, extracted answers or scores differ. The parity test
(``tests/test_eval_parity.py``) asserts that none does; the speed benchmark
(``benchmarks/bench_vs_lm_eval.py``) reports the same comparison next to its timings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mrpo.evals.harness import HarnessOptions
from mrpo.evals.harness.backend import evaluate_harness, load_harness_data
from mrpo.evals.registry import resolve_task
from mrpo.evals.tasks import EvalSettings, TaskResult
from mrpo.evals.truthfulqa import TARGET_DELIMITER, choices_and_labels, doc_to_text
from mrpo.evals.truthfulqa.loader import load_truthfulqa_mc
from mrpo.evals.truthfulqa.records import TruthfulQARecord

LM_EVAL_TASKS = {"gsm8k": ("gsm8k",), "truthfulqa": ("truthfulqa_mc1", "truthfulqa_mc2")}
"""lm-eval's tasks that score what each of mrpo's tasks scores."""


@dataclass
class Timed:
    """One backend's run of one task: its result and wall time in seconds."""

    result: TaskResult
    seconds: float


@dataclass
class ParityRun:
    """Both backends on the same questions: mrpo's result and lm-eval's, per mrpo task."""

    native: dict[str, Timed] = field(default_factory=dict)
    lm_eval: dict[str, dict[str, Timed]] = field(default_factory=dict)

    def lm_eval_seconds(self, task: str) -> float:
        return sum(t.seconds for t in self.lm_eval[task].values())


def run_parity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    limits: Mapping[str, int],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    lm_eval_batch_size: int = 1,
    harness: HarnessOptions | None = None,
) -> ParityRun:
    """Run mrpo's task and lm-eval's tasks for each ``limits`` entry (``gsm8k``,
    ``truthfulqa`` -> first n questions); data loading is not timed.

    ``lm_eval_batch_size`` is lm-eval's ``batch_size`` (its default is 1).
    """
    harness = harness or HarnessOptions(include_defaults=False)
    run = ParityRun()
    for name, limit in limits.items():
        task = resolve_task(name)
        data = task.load_data(data_dir)
        start = time.perf_counter()
        result = task.evaluate(model, tokenizer, data, EvalSettings(limit, batch_size))
        run.native[name] = Timed(result, time.perf_counter() - start)
        run.lm_eval[name] = {}
        for lm_name in LM_EVAL_TASKS[name]:
            lm_data = load_harness_data(lm_name, harness, data_dir)
            start = time.perf_counter()
            settings = EvalSettings(limit, lm_eval_batch_size)
            lm_result = evaluate_harness(model, tokenizer, lm_data, settings)
            run.lm_eval[name][lm_name] = Timed(lm_result, time.perf_counter() - start)
    return run


@dataclass
class GSM8KComparison:
    """Items (test-set indices) where the backends differ, by what differs."""

    items: int
    prompts: list[int] = field(default_factory=list)
    generations: list[int] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # an extracted answer (either filter)
    scores: list[int] = field(default_factory=list)  # an exact-match outcome (either filter)

    @property
    def identical(self) -> bool:
        return not (self.prompts or self.generations or self.answers or self.scores)


FILTERS = {"strict-match": "strict_match", "flexible-extract": "flexible_extract"}
"""lm-eval's GSM8K filter names and mrpo's."""


def compare_gsm8k(
    native: Sequence[Mapping[str, Any]], lm_eval: Sequence[Mapping[str, Any]]
) -> GSM8KComparison:
    """Compare mrpo's GSM8K samples with lm-eval's (one record per question and filter)."""
    by_doc: dict[int, dict[str, Mapping[str, Any]]] = {}
    for record in lm_eval:
        by_doc.setdefault(int(record["doc_id"]), {})[record["filter"]] = record
    out = GSM8KComparison(items=len(native))
    for sample in native:
        index = int(sample["index"])
        records = by_doc.get(index, {})
        if set(records) != set(FILTERS):
            out.prompts.append(index)  # lm-eval did not score this question
            continue
        first = records["strict-match"]
        if first["arguments"][0][0] != sample["prompt"]:
            out.prompts.append(index)
        if first["resps"][0][0] != sample["generation"]:
            out.generations.append(index)
        for lm_filter, name in FILTERS.items():
            record = records[lm_filter]
            if record["filtered_resps"][0] != sample[name]:
                out.answers.append(index)
            if bool(record["exact_match"]) != sample[f"{name}_correct"]:
                out.scores.append(index)
    out.answers, out.scores = sorted(set(out.answers)), sorted(set(out.scores))
    return out


@dataclass
class TruthfulQAComparison:
    """Items (question indices) where the backends differ, and the largest differences."""

    items: int
    requests: list[int] = field(default_factory=list)  # context or continuations
    mc1: list[int] = field(default_factory=list)  # MC1 outcome
    mc2: list[int] = field(default_factory=list)  # MC2 beyond the tolerance
    max_mc2_diff: float = 0.0
    max_loglik_diff: float = 0.0

    @property
    def identical(self) -> bool:
        return not (self.requests or self.mc1 or self.mc2)


def compare_truthfulqa(
    native: Sequence[Mapping[str, Any]],
    lm_eval: Mapping[str, Sequence[Mapping[str, Any]]],
    records: Sequence[TruthfulQARecord],
    *,
    mc2_tolerance: float = 1e-4,
) -> TruthfulQAComparison:
    """Compare mrpo's TruthfulQA samples with lm-eval's ``truthfulqa_mc1``/``_mc2`` records.

    ``records`` are the questions (the request texts are rebuilt from them to check what
    lm-eval scored); MC1 must agree exactly, MC2 within ``mc2_tolerance``.
    """
    by_task = {
        task: {int(r["doc_id"]): r for r in lm_eval[f"truthfulqa_{task}"]}
        for task in ("mc1", "mc2")
    }
    out = TruthfulQAComparison(items=len(native))
    for sample in native:
        index = int(sample["index"])
        record = records[index]
        for task, lm_records in by_task.items():
            lm = lm_records.get(index)
            choices, _ = choices_and_labels(record, task)
            expected = [[doc_to_text(record.question), TARGET_DELIMITER + c] for c in choices]
            if lm is None or [list(a) for a in lm["arguments"]] != expected:
                out.requests.append(index)
                continue
            lls = [float(resp[0][0]) for resp in lm["resps"]]
            diffs = [abs(a - b) for a, b in zip(lls, sample[task]["logliks"], strict=True)]
            out.max_loglik_diff = max(out.max_loglik_diff, *diffs)
            diff = abs(float(lm["acc"]) - sample[task]["score"])
            if task == "mc1" and diff != 0:
                out.mc1.append(index)
            if task == "mc2":
                out.max_mc2_diff = max(out.max_mc2_diff, diff)
                if diff > mc2_tolerance:
                    out.mc2.append(index)
    out.requests = sorted(set(out.requests))
    return out


def compare_run(
    run: ParityRun, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, GSM8KComparison | TruthfulQAComparison]:
    """The per-item comparison of every task of ``run``."""
    found: dict[str, GSM8KComparison | TruthfulQAComparison] = {}
    if "gsm8k" in run.native:
        found["gsm8k"] = compare_gsm8k(
            run.native["gsm8k"].result.samples, run.lm_eval["gsm8k"]["gsm8k"].result.samples
        )
    if "truthfulqa" in run.native:
        lm = {name: timed.result.samples for name, timed in run.lm_eval["truthfulqa"].items()}
        found["truthfulqa"] = compare_truthfulqa(
            run.native["truthfulqa"].result.samples, lm, load_truthfulqa_mc(data_dir=data_dir)
        )
    return found
