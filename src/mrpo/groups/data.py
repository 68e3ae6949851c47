"""The ``data`` group: the preference data, its split and how its pairs are batched."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mrpo.data.filters import LengthFilter
from mrpo.domains import Choice, Flag, Number, Table, Text, setting

__all__ = ["DataConfig"]

COUNT = Number(int, ge=1)
COUNT_OR_NULL = Number(int, ge=1, nullable=True)


def _formats() -> list[str]:
    from mrpo.data.formats import FORMATS

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
