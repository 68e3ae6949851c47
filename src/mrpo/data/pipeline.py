"""The ``data`` group's settings (:class:`DataConfig`) and the steps from them to a run's data:
loaded, validated, filtered, split and tokenized pairs (:func:`prepare_data`; no model loaded)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import MISSING
from transformers import PreTrainedTokenizerBase

from mrpo.data.filters import FilterReport, LengthFilter, filter_by_length
from mrpo.data.formats import FORMATS
from mrpo.data.layout import PairLayout
from mrpo.data.preference import PreferenceLoadResult, load_preference_data
from mrpo.data.prepare import prepare_pairs
from mrpo.data.splits import split_counts, split_rows
from mrpo.data.table import pairs_fingerprint
from mrpo.data.tokenize import TokenizedPairs, pair_token_lengths
from mrpo.data.types import PreferenceExample, TokenizedPair
from mrpo.data.validation import DataValidationError
from mrpo.domains import Choice, Flag, Number, Table, Text, setting

if TYPE_CHECKING:
    from mrpo.references import ReferenceEnsemble

log = logging.getLogger("mrpo.train")

COUNT = Number(int, ge=1)
COUNT_OR_NULL = Number(int, ge=1, nullable=True)


def _formats() -> list[str]:
    return list(FORMATS)


@dataclass
class DataConfig:
    """Preference data: source, format, split and tokenization limits."""

    source: str = setting(MISSING, Text())
    subset: str | None = setting(None, Text(nullable=True))
    split: str = setting("train", Text())
    # A mrpo.data.formats.FORMATS name; null: told by the fields.
    format: str | None = setting(None, Choice(_formats, nullable=True))
    data_dir: str | None = setting(None, Text(nullable=True))
    drop_invalid: bool = setting(False, Flag())
    max_samples: int | None = setting(None, Number(int, ge=2, nullable=True))  # train and val
    # Source field -> the field a format reads, e.g. {instruction: prompt} (mrpo.data.formats).
    columns: dict[str, str] = setting({}, Table())
    # Filters on the loaded pairs before the split (mrpo.data.filters).
    length_filter: LengthFilter = field(default_factory=LengthFilter)
    # Split sizes: below 1 a fraction of the pairs, from 1 up a number of pairs. The test
    # split (0: none) is scored after training only; train_size null takes the rest.
    val_size: float = setting(0.1, Number(float, gt=0))
    test_size: float = setting(0.0, Number(float, ge=0))
    train_size: float | None = setting(None, Number(float, gt=0, nullable=True))
    split_seed: int = setting(0, Number(int, ge=0, lt=2**32))
    max_length: int = setting(512, Number(int, gt=1))
    max_prompt_length: int | None = setting(256, Number(int, gt=0, lt="max_length", nullable=True))
    batch_size: int = setting(4, COUNT)
    eval_batch_size: int = setting(8, COUNT)
    group_by_length: bool = setting(True, Flag())
    num_workers: int = setting(0, Number(int, ge=0))
    # Processes that tokenize the pairs (mrpo.data.prepare; null: one per 5,000 pairs up to
    # the CPU count; more did not pay on 2 shared cores, docs/scaling.md). Tokenized tables
    # are kept in <paths.cache_dir>/tokenized and reused by later runs.
    num_proc: int | None = setting(1, COUNT_OR_NULL)
    # How a batch's pairs become rows (mrpo.data.layout, docs/scaling.md), for the policy and
    # the references: the prompt computed once per pair, and sequences packed padding-free
    # into rows of at most pack_row_tokens tokens (null: the batch's longest). A model outside
    # the allow-list of mrpo.logprobs.attention keeps the padded layout on its own.
    prefix_sharing: bool = setting(True, Flag())
    packing: bool = setting(False, Flag())
    pack_row_tokens: int | None = setting(None, COUNT_OR_NULL)
    # Training batches cut by a token budget (the layout's tokens) instead of batch_size pairs.
    max_tokens_per_batch: int | None = setting(None, COUNT_OR_NULL)


@dataclass
class PreparedData:
    """Validated, filtered, split and tokenized preference data (policy tokenizer).

    The test split (empty unless ``data.test_size`` is set) is scored after training only.
    """

    train_examples: list[PreferenceExample]
    val_examples: list[PreferenceExample]
    train_pairs: Sequence[TokenizedPair]
    val_pairs: Sequence[TokenizedPair]
    report: dict[str, Any] = field(default_factory=dict)
    test_examples: list[PreferenceExample] = field(default_factory=list)
    test_pairs: Sequence[TokenizedPair] = field(default_factory=list)

    @property
    def all_examples(self) -> list[PreferenceExample]:
        """Every row the references must score: train, validation and test."""
        return self.train_examples + self.val_examples + self.test_examples


def tokenized_cache_dir(cache_dir: str | Path) -> Path:
    """Where prepared (tokenized) pair tables are kept, under ``paths.cache_dir``."""
    return Path(cache_dir) / "tokenized"


def pair_layout(data: DataConfig) -> PairLayout:
    """The layout of a batch's pairs the config asks for (models may fall back to padding)."""
    return PairLayout(
        share_prefix=data.prefix_sharing, pack=data.packing, row_tokens=data.pack_row_tokens
    )


def prepare_data(
    settings: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    data_dir: str | None,
    cache_dir: str | Path,
    references: Callable[[], ReferenceEnsemble],
) -> PreparedData:
    """Load, validate, filter, split and tokenize the preference data (no model is loaded):
    sources in ``settings.data_dir`` or else ``data_dir``, tokenized tables kept in ``cache_dir``
    (:func:`tokenized_cache_dir`), and ``references`` built only when ``fit_all_references``
    measures their tokenizers.

    Raises:
        OptionError: naming ``val_size``, ``test_size`` or ``train_size`` (the split).
    """
    d = settings
    loaded = load_preference_data(
        d.source,
        split=d.split,
        subset=d.subset,
        data_dir=d.data_dir or data_dir,
        drop_invalid=d.drop_invalid,
        limit=d.max_samples,
        format=d.format,
        columns=d.columns or None,
    )
    if loaded.dropped.num_dropped:
        log.warning("%s", loaded.dropped.summary())
    examples, filtered = filter_lengths(d, loaded.examples, tokenizer, references)
    counts = split_counts(
        len(examples), val_size=d.val_size, test_size=d.test_size, train_size=d.train_size
    )
    train_ex, val_ex, test_ex = split_rows(examples, counts, seed=d.split_seed)
    train, val, test = (
        prepare_pairs(
            ex,
            tokenizer,
            max_length=d.max_length,
            max_prompt_length=d.max_prompt_length,
            cache_dir=cache_dir,
            num_proc=d.num_proc,
        )
        for ex in (train_ex, val_ex, test_ex)
    )
    report = _data_report(loaded, (train, val, test), filtered)
    log.info("data: %s", report)
    return PreparedData(train_ex, val_ex, train.pairs, val.pairs, report, test_ex, test.pairs)


def _data_report(
    loaded: PreferenceLoadResult,
    tokenized: tuple[TokenizedPairs, TokenizedPairs, TokenizedPairs],
    filtered: FilterReport | None,
) -> dict[str, Any]:
    """What the run's record says of its data: rows, pairs per split, truncations and the
    fingerprints of what the policy saw (token ids: equal fingerprints, equal data)."""
    train, val, test = tokenized
    report = {
        "source": loaded.source,
        "rows": len(loaded.examples),
        "dropped": loaded.dropped.num_dropped,
        "train_pairs": len(train.pairs),
        "val_pairs": len(val.pairs),
        "test_pairs": len(test.pairs),
        "truncated": train.num_truncated + val.num_truncated + test.num_truncated,
        "train_fingerprint": pairs_fingerprint(train.pairs),
        "val_fingerprint": pairs_fingerprint(val.pairs),
    }
    if test.pairs:
        report["test_fingerprint"] = pairs_fingerprint(test.pairs)
    if filtered is not None:
        report["length_filter"] = asdict(filtered)
    return report


def filter_lengths(
    settings: DataConfig,
    examples: list[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    references: Callable[[], ReferenceEnsemble],
) -> tuple[list[PreferenceExample], FilterReport | None]:
    """Apply ``settings.length_filter`` to the loaded pairs (before the split).

    Lengths come from the policy's tokenizer and, for ``fit_all_references``, from every
    reference's own tokenizer and chat template (tokenizers only; no model is loaded).

    Raises:
        DataValidationError: the filters leave no pair.
    """
    length_filter = settings.length_filter
    if not length_filter.enabled:
        return examples, None
    lengths = [pair_token_lengths(examples, tokenizer)]
    if length_filter.fit_all_references:
        ensemble = references()
        memo: dict[Any, list[tuple[int, int, int]]] = {}
        lengths += [ensemble.token_lengths(k, examples, memo) for k in range(len(ensemble))]
    table = torch.tensor(lengths, dtype=torch.int64).view(len(lengths), len(examples), 3)
    kept, report = filter_by_length(examples, table, length_filter, max_length=settings.max_length)
    log.info("length filter: kept %d of %d pairs (%s)", report.kept, report.rows, report)
    if not kept:
        raise DataValidationError(
            f"data.length_filter keeps no pair of {report.rows}: {report}", source=settings.source
        )
    return kept, report
