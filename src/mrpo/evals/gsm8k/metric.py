"""Exact match for GSM8K, as lm-evaluation-harness scores its ``gsm8k`` task.

An ``evaluate`` metric script: load it with ``evaluate.load(<path to this file>)`` (see
``mrpo.evals.sources.load_metric("gsm8k")``). It is self-contained, as hub metric scripts are,
because ``evaluate`` copies the file into its module cache before importing it.

The comparison is the harness's ``exact_match`` (ported there from the hub's ``exact_match``):
every pattern in ``regexes_to_ignore`` is removed from both prediction and reference with
``re.sub``, in order; then case and (optionally) punctuation and digits are dropped; then the
strings are compared. The harness's ``gsm8k`` config uses ``ignore_case=True``,
``ignore_punctuation=False`` and the four patterns of ``GSM8K_REGEXES_TO_IGNORE``, so a full
reference solution reduces to its final number.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import datasets
import evaluate

GSM8K_REGEXES_TO_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")

_DESCRIPTION = """
Exact match after the normalization lm-evaluation-harness applies for GSM8K: remove each pattern
of `regexes_to_ignore` from prediction and reference, optionally lower-case and strip
punctuation or digits, then compare.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of extracted answers (strings), e.g. "1,000" or "[invalid]".
    references: list of gold strings; a full GSM8K solution works ("... #### 1,000").
    regexes_to_ignore: patterns removed, in order (default: the harness's gsm8k patterns).
    ignore_case: lower-case both sides (default True, as the harness's gsm8k).
    ignore_punctuation: drop string.punctuation (default False).
    ignore_numbers: drop digits (default False).
    return_scores: also return the 0/1 score of every prediction under "scores".
Returns:
    exact_match: mean of the per-prediction scores, in [0, 1].
"""


def normalize(
    text: str,
    *,
    regexes_to_ignore: Sequence[str] = GSM8K_REGEXES_TO_IGNORE,
    ignore_case: bool = True,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
) -> str:
    """Apply the harness's exact-match normalization to one string."""
    for pattern in regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if ignore_numbers:
        text = text.translate(str.maketrans("", "", string.digits))
    return text


def exact_match_scores(
    predictions: Sequence[str], references: Sequence[str], **normalize_kwargs: object
) -> list[float]:
    """Return 1.0 where ``normalize(prediction) == normalize(reference)``, else 0.0."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return [
        float(normalize(p, **normalize_kwargs) == normalize(r, **normalize_kwargs))  # type: ignore[arg-type]
        for p, r in zip(predictions, references, strict=True)
    ]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GSM8KExactMatch(evaluate.Metric):
    """The ``evaluate`` module wrapping :func:`exact_match_scores`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        regexes_to_ignore: Sequence[str] = GSM8K_REGEXES_TO_IGNORE,
        ignore_case: bool = True,
        ignore_punctuation: bool = False,
        ignore_numbers: bool = False,
        return_scores: bool = False,
    ) -> dict[str, object]:
        scores = exact_match_scores(
            predictions,
            references,
            regexes_to_ignore=tuple(regexes_to_ignore),
            ignore_case=ignore_case,
            ignore_punctuation=ignore_punctuation,
            ignore_numbers=ignore_numbers,
        )
        result: dict[str, object] = {"exact_match": sum(scores) / len(scores) if scores else 0.0}
        if return_scores:
            result["scores"] = scores
        return result
