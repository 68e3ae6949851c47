"""Bad files: data files, model sources and weight files, folders, checkpoints.

The ``{name}`` placeholders are the files of
:func:`~support.bad_inputs.fixtures.build_fixtures`.
"""

from __future__ import annotations

from support.bad_inputs.case import BadInput

DATA: tuple[BadInput, ...] = (
    BadInput(
        "missing_field",
        ("data.source={missing}",),
        r"data error: .*missing.jsonl: 1 of 1 rows .*line 1: missing field\(s\) 'rejected'.*"
        r"data.drop_invalid=true",
    ),
    BadInput(
        "truncated_gzip",
        ("data.source={truncated}",),
        r"data error: .*truncated.jsonl.gz: damaged or truncated gzip file",
    ),
    BadInput(
        "not_utf8",
        ("data.source={latin1}",),
        r"data error: .*latin1.jsonl: line 1 is not UTF-8 text \(byte 0xe9\)",
    ),
    BadInput(
        "data_not_found",
        ("data.source={root}/nope.jsonl",),
        r"data error: preference data not found: '.*nope.jsonl'",
    ),
    BadInput(
        "data_format",
        ("data.format=nope",),
        r"config error: data.format: unknown 'nope'; must be one of",
    ),
    BadInput(
        "val_size_no_training_pair",
        ("data.val_size=40",),
        r"config error: data.val_size: validation \(40\) and test \(0\) rows leave no training row",
    ),
    BadInput(
        "val_size_zero_pairs_for_vdw",
        ("data.val_size=0.01", "references=prompted", "references.num_refs=2", "weights=vdw"),
        r"config error: data.val_size: gives 0 validation pairs, but weighting 'vdw' needs them",
    ),
    BadInput(
        "max_prompt_length",
        ("data.max_prompt_length=500",),
        r"config error: data.max_prompt_length: must be in \(0, max_length=96\) or null, got 500",
    ),
    BadInput("required_key", ("data.source=???",), r"config error: data.source: required value"),
)
"""Preference data files: fields, compression, encoding, splits."""

MODELS: tuple[BadInput, ...] = (
    BadInput(
        "policy_path",
        ("model.source=/no/such/model",),
        r"config error: model.source: model source '/no/such/model': no such directory or file",
    ),
    BadInput(
        "no_chat_template",
        ("model.source={no_template}",),
        r"config error: model.source: the tokenizer of '.*no_template' has no chat template",
    ),
    BadInput(
        "truncated_safetensors",
        ("model.source={cut_weights}",),
        r"config error: model.source: .*cut_weights/model.safetensors: truncated safetensors file",
    ),
    BadInput(
        "truncated_gguf",
        ("model.source={cut_gguf}",),
        r"config error: model.source: .*cut.gguf: (not a complete|truncated) GGUF file",
    ),
    BadInput(
        "lora_target_modules",
        ("model.lora.enabled=true", "model.lora.target_modules=[nope_proj]"),
        r"config error: model.lora.target_modules: \['nope_proj'\] match no module of Llama",
    ),
    BadInput(
        "lora_rank",
        ("model.lora.enabled=true", "model.lora.r=0"),
        r"config error: model.lora.r: must be >= 1, got 0",
    ),
    BadInput(
        "lora_dropout",
        ("model.lora.enabled=true", "model.lora.dropout=1.5"),
        r"config error: model.lora.dropout: must be in \[0, 1\), got 1.5",
    ),
)
"""Model sources, damaged weight files, LoRA targets."""

FOLDERS: tuple[BadInput, ...] = (
    BadInput(
        "cache_not_writable",
        ("paths.cache_dir={a_file}/cache",),
        r"config error: paths.cache_dir: .*a_file/cache is not writable",
    ),
    BadInput(
        "run_dir_in_use",
        ("hydra.run.dir={finished_run}",),
        r"config error: hydra.run.dir: .*finished_run already holds a run",
    ),
)
"""The cache and run folders."""

CHECKPOINTS: tuple[BadInput, ...] = (
    BadInput(
        "ckpt_missing",
        ("ckpt_path={root}/no.ckpt",),
        r"config error: ckpt_path: .*no.ckpt does not exist",
    ),
    BadInput(
        "ckpt_folder", ("ckpt_path={empty_dir}",), r"config error: ckpt_path: .*empty is a folder"
    ),
    BadInput(
        "ckpt_truncated",
        ("ckpt_path={cut_ckpt}",),
        r"config error: ckpt_path: .*cut.ckpt cannot be read as a checkpoint",
    ),
    BadInput(
        "ckpt_remote",
        ("ckpt_path=https://example.com/x.ckpt",),
        r"config error: ckpt_path: 'https://example.com/x.ckpt' is remote",
    ),
    BadInput(
        "ckpt_last_but_none",
        ("ckpt_path=last",),
        r"config error: ckpt_path: 'last' but .* holds no last.ckpt",
    ),
    BadInput(
        "ckpt_other_settings",
        ("ckpt_path={ckpt}", "weights=uniform", "hydra.run.dir={fresh_run}"),
        r"config error: ckpt_path: .*last.ckpt was saved by a run with other settings or data: "
        r"weights.strategy \('arwc' -> 'uniform'\).*force_resume=true",
    ),
)
"""Checkpoints to resume from."""
