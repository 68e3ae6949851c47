"""GSM8K scored as lm-evaluation-harness's ``gsm8k`` task (5-shot, generate-until, exact match).

Harness config reproduced (``lm_eval/tasks/gsm8k/gsm8k.yaml``, version 3):

- prompt ``"Question: {question}\\nAnswer:"``; each few-shot example is that prompt, the target
  delimiter ``" "`` and the full reference solution, followed by the few-shot delimiter
  ``"\\n\\n"``; the test question's prompt comes last;
- few-shot examples from the train split, drawn by the harness's default sampler: one
  ``random.Random(1234)`` stream, and for the i-th evaluated question (in data set order) the
  i-th call ``rnd.sample(train, 5)``. With ``limit=n`` the harness evaluates the first n test
  questions, which receive the first n draws, so limited runs use the same prompts as full ones;
- greedy, at most 256 new tokens, stop at ``"Question:"``, ``"</s>"``, ``"<|im_end|>"``;
- filters ``strict-match`` (first ``#### (\\-?[0-9\\.\\,]+)``) and ``flexible-extract`` (last match
  of ``(-?[$0-9.,]{2,})|(-?[0-9]+)``), ``"[invalid]"`` when nothing matches;
- exact match against the full reference solution, ignoring case and the patterns
  ``",", "\\$", "(?s).*#### ", "\\.$"`` on both sides (``metric.py``).

Differences from running the harness: none in the prompts, filters or scoring. Generation runs
in batches (the harness's default batch size is 1); greedy decoding with masked padding gives the
same tokens up to float rounding, which on real models can rarely flip a near-tie.

A chat variant (``gsm8k_chat``) puts the 0-shot prompt ``"Question: {question}\\nAnswer:"`` in a
user message rendered by the tokenizer's chat template with the generation prompt, as the harness
does with ``--apply_chat_template --num_fewshot 0``; the extraction and scoring are the same.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mrpo.evals.generate import DRAFT_TOKENS, generate_until
from mrpo.evals.gsm8k.loader import load_gsm8k
from mrpo.evals.gsm8k.records import GSM8KRecord
from mrpo.evals.sources import load_metric
from mrpo.evals.tasks import EvalSettings, EvalTask, TaskResult

QUESTION_TEMPLATE = "Question: {question}\nAnswer:"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
NUM_FEWSHOT = 5
FEWSHOT_SEED = 1234
STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
MAX_NEW_TOKENS = 256
STRICT_PATTERN = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
INVALID = "[invalid]"
FILTERS = {"strict_match": (STRICT_PATTERN, 0), "flexible_extract": (FLEXIBLE_PATTERN, -1)}


@dataclass
class GSM8KResult:
    """Scores and per-question samples of one GSM8K run.

    Attributes:
        metrics: ``{"strict_match": float, "flexible_extract": float}``, each in [0, 1].
        samples: one dict per question: index, question, prompt, generation, gold, and for each
            filter the extracted answer and whether it is correct.
        num_generated_tokens: total tokens generated.
    """

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)
    num_generated_tokens: int = 0


def doc_to_text(question: str) -> str:
    """The harness's ``doc_to_text``: ``"Question: {question}\\nAnswer:"``."""
    return QUESTION_TEMPLATE.format(question=question)


def fewshot_draws(
    num_questions: int, pool_size: int, *, k: int = NUM_FEWSHOT, seed: int = FEWSHOT_SEED
) -> list[list[int]]:
    """Train-split indices of the few-shot examples of the first ``num_questions`` questions.

    Reproduces the harness's sampler: question i gets the i-th ``rnd.sample(train, k)`` of one
    ``random.Random(seed)``. ``random.sample`` picks positions from the population's length
    alone, so sampling ``range(pool_size)`` gives the harness's choice of documents.
    """
    if k > pool_size:
        raise ValueError(f"cannot draw {k} few-shot examples from {pool_size} train rows")
    rnd = random.Random(seed)
    return [rnd.sample(range(pool_size), k) for _ in range(num_questions)]


def fewshot_prompt(record: GSM8KRecord, examples: Sequence[GSM8KRecord]) -> str:
    """The harness's few-shot context: examples with full solutions, then the question."""
    shots = "".join(
        doc_to_text(ex.question) + TARGET_DELIMITER + ex.answer + FEWSHOT_DELIMITER
        for ex in examples
    )
    return shots + doc_to_text(record.question)


def build_prompts(
    records: Sequence[GSM8KRecord],
    train: Sequence[GSM8KRecord],
    *,
    num_fewshot: int = NUM_FEWSHOT,
    seed: int = FEWSHOT_SEED,
) -> list[str]:
    """Few-shot prompts for ``records``, which must be the first rows of the test split.

    The sampler's draws are tied to a question's position in the test split, so each record's
    ``index`` selects its draw (a prefix of the split reproduces the harness's ``limit``).
    """
    if num_fewshot == 0:
        return [doc_to_text(r.question) for r in records]
    num = max((r.index for r in records), default=-1) + 1
    draws = fewshot_draws(num, len(train), k=num_fewshot, seed=seed)
    return [fewshot_prompt(r, [train[j] for j in draws[r.index]]) for r in records]


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """The 0-shot prompt as one user message through the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("gsm8k_chat needs a tokenizer with a chat template")
    messages = [{"role": "user", "content": doc_to_text(question)}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def regex_extract(text: str, pattern: str, group_select: int = 0, fallback: str = INVALID) -> str:
    """The harness's ``regex`` filter: the ``group_select``-th ``findall`` match, stripped.

    With several groups a match is a tuple, and its first non-empty group is taken.
    """
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), fallback)
    return match.strip()


def extract_strict(text: str) -> str:
    """``strict-match``: the number after the first ``"#### "``, else ``"[invalid]"``."""
    return regex_extract(text, STRICT_PATTERN, 0)


def extract_flexible(text: str) -> str:
    """``flexible-extract``: the last number-like span, else ``"[invalid]"``."""
    return regex_extract(text, FLEXIBLE_PATTERN, -1)


def score_generations(
    generations: Sequence[str], records: Sequence[GSM8KRecord]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Apply both filters and the exact-match metric; returns (metrics, per-question samples)."""
    metric = load_metric("gsm8k")
    references = [r.answer for r in records]
    metrics: dict[str, float] = {}
    samples: list[dict[str, Any]] = [
        {"index": r.index, "question": r.question, "generation": g, "gold": r.gold}
        for r, g in zip(records, generations, strict=True)
    ]
    for name, (pattern, group) in FILTERS.items():
        extracted = [regex_extract(g, pattern, group) for g in generations]
        out = metric.compute(predictions=extracted, references=references, return_scores=True)
        metrics[name] = float(out["exact_match"])
        for sample, answer, score in zip(samples, extracted, out["scores"], strict=True):
            sample[name] = answer
            sample[f"{name}_correct"] = bool(score)
    return metrics, samples


def evaluate_gsm8k(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[GSM8KRecord],
    train: Sequence[GSM8KRecord] | None = None,
    *,
    chat: bool = False,
    num_fewshot: int = NUM_FEWSHOT,
    seed: int = FEWSHOT_SEED,
    batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS,
    max_length: int | None = None,
    draft_tokens: int = DRAFT_TOKENS,
    progress: str | None = None,
) -> GSM8KResult:
    """Generate answers for ``records`` (test rows) and score them.

    ``train`` is needed for few-shot prompts (``chat=False`` and ``num_fewshot > 0``); the chat
    variant is always 0-shot. ``draft_tokens`` sets the guessing of
    :func:`~mrpo.evals.generate.generate_until` (the same text). ``progress`` labels a
    progress bar over generation batches.
    """
    if not records:
        raise ValueError("no GSM8K records to evaluate")
    if chat:
        prompts = [chat_prompt(tokenizer, r.question) for r in records]
    else:
        if num_fewshot > 0 and not train:
            raise ValueError("few-shot GSM8K needs the train split (argument `train`)")
        prompts = build_prompts(records, train or [], num_fewshot=num_fewshot, seed=seed)
    generations = generate_until(
        model,
        tokenizer,
        prompts,
        stop=STOP_SEQUENCES,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_length=max_length,
        draft_tokens=draft_tokens,
        progress=progress,
    )
    metrics, samples = score_generations([g.text for g in generations], records)
    for sample, prompt in zip(samples, prompts, strict=True):
        sample["prompt"] = prompt
    return GSM8KResult(metrics, samples, sum(g.num_tokens for g in generations))


SAMPLE_COLUMNS = (
    "index",
    "question",
    "generation",
    "gold",
    *(col for name in FILTERS for col in (name, f"{name}_correct")),
)
"""Sample fields of a GSM8K evaluation logged as a W&B table."""


@dataclass(frozen=True)
class GSM8KData:
    """The test questions and, for few-shot prompts, the train split they draw examples from."""

    test: list[GSM8KRecord]
    train: list[GSM8KRecord] | None = None


def _load(few_shot: bool, data_dir: str | os.PathLike[str] | None) -> GSM8KData:
    train = load_gsm8k("train", data_dir=data_dir) if few_shot else None
    return GSM8KData(load_gsm8k("test", data_dir=data_dir), train)


def _run(
    chat: bool,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: GSM8KData,
    s: EvalSettings,
) -> TaskResult:
    records = data.test[: s.limit]
    result = evaluate_gsm8k(
        model,
        tokenizer,
        records,
        data.train,
        chat=chat,
        batch_size=s.batch_size,
        max_new_tokens=s.max_new_tokens,
        max_length=s.max_length,
        draft_tokens=s.draft_tokens,
        progress=s.progress,
    )
    counts = {"num_samples": len(records), "generated_tokens": result.num_generated_tokens}
    return TaskResult(result.metrics, result.samples, counts)


EVAL_TASKS = (
    EvalTask(
        name="gsm8k",
        description="GSM8K 5-shot, generate until, exact match (lm-eval-harness gsm8k)",
        load_data=lambda data_dir: _load(True, data_dir),
        evaluate=lambda model, tok, data, s: _run(False, model, tok, data, s),
        sample_columns=SAMPLE_COLUMNS,
    ),
    EvalTask(
        name="gsm8k_chat",
        description="GSM8K 0-shot through the model's chat template",
        load_data=lambda data_dir: _load(False, data_dir),
        evaluate=lambda model, tok, data, s: _run(True, model, tok, data, s),
        sample_columns=SAMPLE_COLUMNS,
    ),
)
"""The GSM8K tasks (registered by :mod:`mrpo.evals.registry`)."""
