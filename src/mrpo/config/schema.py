"""Typed configuration schema for ``mrpo-train`` and ``mrpo-eval``.

The dataclasses below are registered with Hydra's ConfigStore and named first in the primary
configs' defaults lists, so every YAML file of the config tree (``mrpo/conf``, shipped with the
package) is merged *into* a typed schema: a misspelt key or a value of the wrong type fails at
composition, before anything is loaded. ``???`` marks values a user must give. Entry points
turn the composed config into these plain dataclasses (``OmegaConf.to_object``); library code
never sees OmegaConf objects.

Where a library module has a settings dataclass of its own, the schema uses it rather than a
copy: a reference is a :class:`mrpo.references.ReferenceSpec`, LoRA settings a
:class:`mrpo.models.LoraConfig`, the W&B settings a :class:`mrpo.tracking.wandb.LoggerConfig`,
the length filters a :class:`mrpo.data.filters.LengthFilter`, the lm-eval settings a
:class:`mrpo.evals.harness.HarnessOptions`.
Groups whose keys depend on the choice (``weights``: the strategy's own parameters;
``optimizer``, ``trainer``, ``callbacks``: keyword arguments of the objects they build) are
plain dicts, checked against what they configure by :mod:`mrpo.config.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from mrpo.config.resolvers import register_resolvers
from mrpo.data.filters import LengthFilter
from mrpo.errors import ConfigError
from mrpo.evals.harness.options import HarnessOptions
from mrpo.models.lora import LoraConfig
from mrpo.references.spec import ReferenceSpec
from mrpo.tracking.wandb import LoggerConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The config tree shipped inside the package (``mrpo/conf``; a checkout links ``conf/`` to it)."""

SWEEPS_GROUP = "sweeps"
"""The config group of the sweep files (``mrpo/conf/sweeps``): ``mrpo-train -m +sweeps=<name>``."""


@dataclass
class ModelConfig:
    """The policy: a hub id, a local directory or ``packaged:smollm2-135m-instruct``."""

    source: str = MISSING
    tokenizer: str | None = None
    chat_template: str | None = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory
    compile: bool = False  # torch.compile the policy's backbone (see docs/scaling.md)
    # The policy's transformers attention (null: its default, sdpa). flex_attention (GPUs):
    # packed rows skip their masked tiles; flash_attention_* take no mask: padded layout.
    attn_implementation: str | None = None
    # Log-probs from the last hidden states through the LM head in tiles, without logits
    # (mrpo.logprobs); models it cannot serve exactly keep the logits path on their own.
    fused_lm_head: bool = True
    lm_head_chunk_tokens: int = 1024  # scored tokens per LM-head tile on the fused path
    # Logits path only: rows of logits turned into float32 log-probs at a time (None: all at
    # once); with bf16 logits this bounds the float32 copy, recomputed in backward.
    logprob_chunk_size: int | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Load the linear layers quantized by bitsandbytes (a mrpo.models.quantization name:
    # nf4, fp4, int8) and train LoRA adapters on them (QLoRA); null: full precision.
    quantization: str | None = None


@dataclass
class ReferencesConfig:
    """The reference ensemble: the first ``num_refs`` entries of ``pool`` (all when null)."""

    pool: list[ReferenceSpec] = MISSING
    num_refs: int | None = None
    # Pool entries to use, by name and in this order, instead of the first num_refs.
    select: list[str] | None = None
    mode: str = "cached"  # cached | live
    batch_size: int = 8
    # Ranks started together (torchrun, srun) each score 1/N of a missing cache entry's rows.
    split_across_ranks: bool = True
    shard_timeout_s: float = 7200.0  # how long a rank waits for the others' shards
    # How long a job waits for another job filling the same cache entry (null: forever).
    lock_timeout_s: float | None = 10800.0


@dataclass
class DataConfig:
    """Preference data: source, format, split and tokenization limits."""

    source: str = MISSING
    subset: str | None = None
    split: str = "train"
    format: str | None = None  # a mrpo.data.formats.FORMATS name; null: told by the fields
    data_dir: str | None = None
    drop_invalid: bool = False
    max_samples: int | None = None
    # Source field -> the field a format reads, e.g. {instruction: prompt} (mrpo.data.formats).
    columns: dict[str, str] = field(default_factory=dict)
    # Filters on the loaded pairs before the split (mrpo.data.filters).
    length_filter: LengthFilter = field(default_factory=LengthFilter)
    # Split sizes: below 1 a fraction of the pairs, from 1 up a number of pairs. The test
    # split (0: none) is scored after training only; train_size null takes the rest.
    val_size: float = 0.1
    test_size: float = 0.0
    train_size: float | None = None
    split_seed: int = 0
    max_length: int = 512
    max_prompt_length: int | None = 256
    batch_size: int = 4
    eval_batch_size: int = 8
    group_by_length: bool = True
    num_workers: int = 0
    # Processes that tokenize the pairs (mrpo.data.prepare; null: one per 5,000 pairs up to
    # the CPU count; more did not pay on 2 shared cores, docs/scaling.md). Tokenized tables
    # are kept in <paths.cache_dir>/tokenized and reused by later runs.
    num_proc: int | None = 1
    # How a batch's pairs become rows (mrpo.data.layout, docs/scaling.md), for the policy and
    # the references: the prompt computed once per pair, and sequences packed padding-free
    # into rows of at most pack_row_tokens tokens (null: the batch's longest). A model outside
    # the allow-list of mrpo.logprobs.attention keeps the padded layout on its own.
    prefix_sharing: bool = True
    packing: bool = False
    pack_row_tokens: int | None = None
    # Training batches cut by a token budget (the layout's tokens) instead of batch_size pairs.
    max_tokens_per_batch: int | None = None


@dataclass
class LossConfig:
    """The objective (a name in ``mrpo.objectives``) and its options."""

    name: str = MISSING
    beta: float = 0.1
    # A mrpo.objectives.LOSS_TYPES name, or a list of them combined with loss_weights.
    loss_type: Any = "sigmoid"
    loss_weights: list[float] | None = None
    # How K references combine (mrpo.objectives.AGGREGATIONS); null: the objective's own.
    aggregation: str | None = None
    label_smoothing: float = 0.0
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    discopop_tau: float = 0.05
    simpo_gamma: float = 0.5
    ctro: bool | None = None  # None: the objective's own default
    epsilon: float = 0.1
    adaptive_epsilon: bool = True
    harmonic_pairing: str = "general"
    length_normalize: bool = False
    # LD-DPO's α in [0, 1] (TRL's ld_alpha): response tokens past the pair's shared length
    # count α-fold in every log-prob, the policy's and the references'; null (or 1): off.
    ld_alpha: float | None = None


@dataclass
class SchedulerConfig:
    """Learning-rate schedule: a ``transformers.get_scheduler`` name plus warm-up."""

    name: str = "cosine"
    warmup_ratio: float = 0.1


@dataclass
class EvalConfig:
    """Benchmarks: run by the evaluation callback during training, and by ``mrpo-eval``
    (which uses ``tasks``, ``limit``, ``batch_size``, ``max_new_tokens``, ``draft_tokens``,
    ``log_samples`` and ``harness``; ``every_n_steps`` and ``final_limit`` concern training
    only). A task name that is not built in is an lm-evaluation-harness task, run with
    ``harness``'s settings."""

    tasks: list[str] = field(default_factory=list)
    every_n_steps: int = 0
    limit: int | None = 50
    final_limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 256
    draft_tokens: int = 8
    log_samples: bool = True
    harness: HarnessOptions = field(default_factory=HarnessOptions)


@dataclass
class PathsConfig:
    root_dir: str = "."
    output_dir: str = MISSING
    data_dir: str | None = None
    cache_dir: str = MISSING


@dataclass
class TrainConfig:
    """Primary config of ``mrpo-train``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # ``strategy`` (a mrpo.objectives.WEIGHTINGS name) and that strategy's own parameters.
    weights: dict[str, Any] = field(default_factory=lambda: {"strategy": "uniform"})
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    stage: str = "train"  # train | cache
    seed: int = 0
    ckpt_path: str | None = None  # last | best | a .ckpt file
    force_resume: bool = False  # resume even when the checkpoint's settings or data differ
    force_memory: bool = False  # train even when the memory plan says the device is too small
    save_model: bool = True
    task_name: str = "train"


@dataclass
class EvalRunConfig:
    """Primary config of ``mrpo-eval`` (scoring is deterministic: greedy decoding and the
    harness's fixed few-shot seed, so there is no ``seed``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoint: str | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "eval"


Schema = TypeVar("Schema", TrainConfig, EvalRunConfig)


def to_dataclass(cfg: DictConfig, schema: type[Schema]) -> Schema:
    """The composed config as its schema's dataclass (``TrainConfig``, ``EvalRunConfig``).

    Raises:
        ConfigError: a required value (``???``) was left unset (naming its key), or the
            config was composed from another primary config than ``schema``'s.
    """
    try:
        result = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key or "?"
        raise ConfigError(
            key, f"required value is missing (??? in the config); set it, e.g. {key}=..."
        ) from None
    if not isinstance(result, schema):
        raise ConfigError(
            "defaults", f"the config is not a {schema.__name__} (got {type(result).__name__})"
        )
    return result


def resolved_container(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain, fully resolved Python containers (for records and W&B)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(f"a composed config is a mapping, got {type(container).__name__}")
    return {str(k): v for k, v in container.items()}


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore and the configs' resolvers (called by
    the entry points)."""
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalRunConfig)
