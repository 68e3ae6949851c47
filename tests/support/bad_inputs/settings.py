"""Bad settings: plain values, references, the optimizer and Trainer, callbacks and evaluation,
settings that need a GPU."""

from __future__ import annotations

from support.bad_inputs.case import BadInput

VALUES: tuple[BadInput, ...] = (
    BadInput("seed", ("seed=-1",), r"config error: seed: must be in \[0, 2\*\*32\)"),
    BadInput("stage", ("stage=nope",), r"config error: stage: unknown \'nope\'; must be one of"),
    BadInput("beta", ("loss.beta=0",), r"config error: loss.beta: must be > 0, got 0"),
    BadInput(
        "loss_name",
        ("loss.name=nope",),
        r"config error: loss.name: unknown 'nope'; must be one of \['dpo'",
    ),
    BadInput(
        "harmonic_pairing_needs_k2",
        ("loss.harmonic_pairing=official",),
        r"config error: references.num_refs: objective 'mrpo' needs at least 2 reference\(s\), "
        r"got K=1",
    ),
    BadInput(
        "fixed_weights_length",
        ("weights=fixed", "weights.fixed_weights=[1,2]"),
        r"config error: weights.fixed_weights: .*has 2 entries but there are K=1 references",
    ),
    BadInput(
        "weighting_parameter_typo",
        ("weights=sliding_window", "+weights.windw=3"),
        r"config error: weights.windw: is not a key of WeightsConfig",
    ),
    BadInput(
        "weighting_name", ("weights.strategy=nope",), r"config error: weights.strategy: unknown"
    ),
    BadInput(
        "model_dtype", ("model.dtype=float8",), r"config error: model.dtype: unknown 'float8'"
    ),
    BadInput(
        "logger_mode",
        ("logger.mode=sometimes",),
        r"config error: logger.mode: unknown 'sometimes'; must be one of",
    ),
)
"""Plain values: seed, stage, loss, weighting, dtypes, logger."""

REFERENCES: tuple[BadInput, ...] = (
    BadInput(
        "num_refs",
        ("references=prompted", "references.num_refs=9"),
        r"config error: references.num_refs: must be between 1 and the pool size 4, got 9",
    ),
    BadInput(
        "reference_dtype",
        ("references=prompted", "references.num_refs=2", "references.pool.1.dtype=float8"),
        r"config error: references.pool.1.dtype: unknown 'float8'; must be one of",
    ),
    BadInput(
        "moving_reference_alpha",
        ("references.pool.0.source=moving", "references.pool.0.alpha=1.5"),
        r"config error: references.pool.0.alpha: must be in \(0, 1\] or null, got 1.5",
    ),
    BadInput(
        "moving_reference_sharded",
        ("references.pool.0.source=moving", "trainer=fsdp"),
        r"config error: references.pool.0.source: a moving reference is a whole copy of the "
        r"policy.*trainer.strategy=fsdp",
    ),
    BadInput(
        "moving_reference_only_cached",
        ("references.pool.0.source=moving", "stage=cache"),
        r"config error: stage: stage=cache fills the reference cache, and every reference of "
        r"this run moves",
    ),
    BadInput(
        "reference_name",
        ("references=prompted", "references.num_refs=2", "references.pool.1.name=' '"),
        r"config error: references.pool.1.name: must be non-empty text, got ' '",
    ),
    BadInput(
        "reference_template_fails",
        (
            "references=prompted",
            "references.num_refs=2",
            "references.pool.1.source={model}",
            "references.pool.1.chat_template='{{{{ raise_exception(\"broken template\") }}}}'",
        ),
        r"config error: references.pool.1.chat_template: the chat template does not render a "
        r"conversation: .*broken template",
    ),
    BadInput(
        "reference_tokenizer",
        ("references=prompted", "references.num_refs=2", "references.pool.1.source={weights_only}"),
        r"config error: references.pool.1.source: could not load a tokenizer from "
        r"'.*weights_only'",
    ),
    BadInput(
        "lock_timeout",
        ("references.lock_timeout_s=0",),
        r"config error: references.lock_timeout_s: must be > 0 or null, got 0.0",
    ),
)
"""The reference pool and its cache."""

OPTIMIZATION: tuple[BadInput, ...] = (
    BadInput(
        "optimizer_value",
        ("optimizer.lr=-1",),
        r"config error: optimizer.lr: must be > 0, got -1.0",
    ),
    BadInput(
        "optimizer_target",
        ("optimizer._target_=torch.optim.Nope",),
        r"config error: optimizer._target_: cannot import 'torch.optim.Nope'",
    ),
    BadInput(
        "optimizer_argument",
        ("+optimizer.extra.lrr=1",),
        r"config error: optimizer.extra.lrr: is not an argument of torch.optim.AdamW",
    ),
    BadInput("scheduler_name", ("scheduler.name=nope",), r"config error: scheduler.name: "),
    BadInput(
        "warmup_ratio",
        ("scheduler.warmup_ratio=1.5",),
        r"config error: scheduler.warmup_ratio: must be in \[0, 1\), got 1.5",
    ),
    BadInput(
        "trainer_argument",
        ("+trainer.extra.nonsense=1",),
        r"config error: trainer.extra.nonsense: is not a lightning.Trainer argument",
    ),
    BadInput(
        "trainer_precision",
        ("trainer.precision=banana",),
        r"config error: trainer.precision: unknown 'banana'; must be one of",
    ),
)
"""The optimizer, the scheduler and the Trainer."""

CALLBACKS: tuple[BadInput, ...] = (
    BadInput(
        "monitor_never_logged",
        ("callbacks.checkpoint.monitor=val/nope",),
        r"config error: callbacks.checkpoint.monitor: 'val/nope' is never logged",
    ),
    BadInput(
        "checkpoint_mode",
        ("callbacks.checkpoint.mode=sideways",),
        r"config error: callbacks.checkpoint.mode: unknown 'sideways'; must be one of",
    ),
    BadInput(
        "checkpoint_option",
        ("+callbacks.checkpoint.every_n_epochs=2",),
        r"config error: callbacks.checkpoint.every_n_epochs: is not a key of CheckpointConfig",
    ),
    BadInput(
        "nan_guard",
        ("nan_guard.action=ignore",),
        r"config error: nan_guard.action: unknown 'ignore'; must be one of \['stop', 'skip'\]",
    ),
    BadInput(
        "callback_target",
        ("+callbacks.extra.nope._target_=nope.Nope",),
        r"config error: callbacks.extra.nope._target_: cannot import 'nope.Nope'",
    ),
    BadInput("eval_task", ("eval.tasks=[nope]",), r"config error: eval.tasks: unknown task"),
    BadInput(
        "eval_limit", ("eval.limit=0",), r"config error: eval.limit: must be >= 1 or null, got 0"
    ),
    BadInput(
        "eval_draft_tokens",
        ("eval.draft_tokens=-1",),
        r"config error: eval.draft_tokens: must be >= 0, got -1",
    ),
    BadInput(
        "eval_data_missing",
        ("eval.tasks=[truthfulqa]", "paths.data_dir={empty_dir}"),
        r"config error: eval.tasks: the evaluation data of \['truthfulqa'\] cannot be loaded: "
        r"TruthfulQA file not found",
    ),
)
"""Callbacks and evaluation during training."""

NO_GPU: tuple[BadInput, ...] = (
    BadInput(
        "trainer_accelerator",
        ("trainer.accelerator=gpu",),
        r"config error: trainer.accelerator: is 'gpu' but this machine has no CUDA GPU",
    ),
    BadInput(
        "attention_flex_on_cpu",
        ("model.attn_implementation=flex_attention",),
        r"config error: model.attn_implementation: 'flex_attention' cannot train on the CPU",
    ),
    BadInput(
        "attention_flash_on_cpu",
        ("model.attn_implementation=flash_attention_2",),
        r"config error: model.attn_implementation: 'flash_attention_2' cannot train on the "
        r"CPU: flash-attention kernels run on CUDA GPUs only",
    ),
)
"""Settings that need a CUDA GPU: bad inputs only on a machine without one."""
