"""Steps of a training run, each from the typed config to plain objects.

:mod:`mrpo.cli.train` calls these in order. They take the typed
:class:`~mrpo.config.TrainConfig` dataclasses (never OmegaConf objects) and hand plain
arguments to the library modules; the cheap objects every check also builds (the objective, the
reference specs) come from the groups' builders (:mod:`mrpo.groups`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mrpo.config.schema import DataConfig, TrainConfig
from mrpo.data.filters import FilterReport, filter_by_length
from mrpo.data.layout import PairLayout
from mrpo.data.preference import load_preference_data
from mrpo.data.prepare import prepare_pairs
from mrpo.data.splits import split_counts, split_rows
from mrpo.data.tokenize import pair_token_lengths
from mrpo.data.types import PreferenceExample, TokenizedPair
from mrpo.data.validation import DataValidationError
from mrpo.errors import option_prefix
from mrpo.groups.references import build_ensemble, num_references
from mrpo.models import compile_policy, enable_gradient_checkpointing, load_model, load_tokenizer
from mrpo.references.scoring import data_fingerprint
from mrpo.training.trainer import policy_device

log = logging.getLogger("mrpo.train")


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


def model_cache_dir(cache_dir: str | Path) -> Path:
    """Where converted models (the packaged GGUF) are cached, under ``paths.cache_dir``."""
    return Path(cache_dir) / "models"


def tokenized_cache_dir(cache_dir: str | Path) -> Path:
    """Where prepared (tokenized) pair tables are kept, under ``paths.cache_dir``."""
    return Path(cache_dir) / "tokenized"


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load, validate, filter, split and tokenize the preference data (no model is loaded)."""
    d = cfg.data
    loaded = load_preference_data(
        d.source,
        split=d.split,
        subset=d.subset,
        data_dir=d.data_dir or cfg.paths.data_dir,
        drop_invalid=d.drop_invalid,
        limit=d.max_samples,
        format=d.format,
        columns=d.columns or None,
    )
    if loaded.dropped.num_dropped:
        log.warning("%s", loaded.dropped.summary())
    tokenizer = load_tokenizer(
        cfg.model.tokenizer or cfg.model.source,
        chat_template=cfg.model.chat_template,
        cache_dir=model_cache_dir(cfg.paths.cache_dir),
    )
    examples, filtered = filter_lengths(cfg, loaded.examples, tokenizer)
    with option_prefix("data"):
        counts = split_counts(
            len(examples), val_size=d.val_size, test_size=d.test_size, train_size=d.train_size
        )
    train_ex, val_ex, test_ex = split_rows(examples, counts, seed=d.split_seed)
    train_tok, val_tok, test_tok = (
        prepare_pairs(
            ex,
            tokenizer,
            max_length=d.max_length,
            max_prompt_length=d.max_prompt_length,
            cache_dir=tokenized_cache_dir(cfg.paths.cache_dir),
            num_proc=d.num_proc,
        )
        for ex in (train_ex, val_ex, test_ex)
    )
    report = _data_report(loaded, (train_tok, val_tok, test_tok), filtered)
    log.info("data: %s", report)
    return PreparedData(
        train_ex,
        val_ex,
        train_tok.pairs,
        val_tok.pairs,
        report,
        test_examples=test_ex,
        test_pairs=test_tok.pairs,
    )


def _data_report(
    loaded: Any, tokenized: tuple[Any, Any, Any], filtered: FilterReport | None
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
        "train_fingerprint": data_fingerprint(train.pairs),
        "val_fingerprint": data_fingerprint(val.pairs),
    }
    if test.pairs:
        report["test_fingerprint"] = data_fingerprint(test.pairs)
    if filtered is not None:
        report["length_filter"] = asdict(filtered)
    return report


def pair_layout(data: DataConfig) -> PairLayout:
    """The layout of a batch's pairs the config asks for (models may fall back to padding)."""
    return PairLayout(
        share_prefix=data.prefix_sharing, pack=data.packing, row_tokens=data.pack_row_tokens
    )


def filter_lengths(
    cfg: TrainConfig, examples: list[PreferenceExample], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[PreferenceExample], FilterReport | None]:
    """Apply ``data.length_filter`` to the loaded pairs (before the split).

    Lengths come from the policy's tokenizer and, for ``fit_all_references``, from every
    reference's own tokenizer and chat template (tokenizers only; no model is loaded).

    Raises:
        DataValidationError: the filters leave no pair.
    """
    settings = cfg.data.length_filter
    if not settings.enabled:
        return examples, None
    lengths = [pair_token_lengths(examples, tokenizer)]
    if settings.fit_all_references:
        ensemble = build_ensemble(cfg)
        memo: dict[Any, list[tuple[int, int, int]]] = {}
        lengths += [ensemble.token_lengths(k, examples, memo) for k in range(len(ensemble))]
    table = torch.tensor(lengths, dtype=torch.int64).view(len(lengths), len(examples), 3)
    kept, report = filter_by_length(examples, table, settings, max_length=cfg.data.max_length)
    log.info("length filter: kept %d of %d pairs (%s)", report.kept, report.rows, report)
    if not kept:
        raise DataValidationError(
            f"data.length_filter keeps no pair of {report.rows}: {report}", source=cfg.data.source
        )
    return kept, report


def load_policy(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """The trainable policy and its tokenizer."""
    m = cfg.model
    cache = model_cache_dir(cfg.paths.cache_dir)
    tokenizer = load_tokenizer(
        m.tokenizer or m.source, chat_template=m.chat_template, cache_dir=cache
    )
    policy = load_model(
        m.source,
        dtype=m.dtype,
        cache_dir=cache,
        lora=m.lora,
        trainable=True,
        attn_implementation=m.attn_implementation,
        quantization=m.quantization,
        device=policy_device(cfg.trainer),
    )
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if m.compile:
        compile_policy(policy)
    policy.train()  # from_pretrained returns eval mode; dropout is already zeroed
    return policy, tokenizer


def logger_labels(cfg: TrainConfig) -> dict[str, Any]:
    """The W&B run's name, group and tags: the multirun's group, and tags for the swept values.

    Returns keyword arguments of :func:`mrpo.tracking.wandb.make_loggers`.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    group, name = None, None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = Path(hc.sweep.dir).name
            name = hc.job.override_dirname or f"job{hc.job.num}"
    tags = [
        f"loss:{cfg.loss.name}",
        f"num_refs:{num_references(cfg)}",
        f"weights:{cfg.weights.strategy}",
        f"seed:{cfg.seed}",
    ]
    return {"name": name, "group": group, "tags": tags}
