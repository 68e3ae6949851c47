"""A table of bad inputs to ``mrpo-train``, each with the message it must end in.

Used by the command-line test (``tests/test_bad_input_cli.py``: exit status 2, no traceback,
the key or file named, no model loaded) and by ``benchmarks/bad_inputs.py``, which prints the
table with the seconds each input takes to be refused. :func:`build_fixtures` writes the
files the cases refer to: a tiny model, data files broken in various ways, damaged weight
files, and a real checkpoint of a finished tiny run.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mrpo.testing.bad_loss_inputs import LOSS_CASES
from mrpo.testing.runs import run_train_cli, write_tiny_model

GOOD_ROW = {
    "prompt": "How do I bake bread?",
    "chosen": "Mix flour, water, yeast and salt, knead, let it rise, bake.",
    "rejected": "No idea.",
}
MODEL_LOADED = ("loading model", "converting the GGUF model")
"""Log lines that only a model load writes: none may appear before a bad input's message."""


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``mrpo-train`` arguments (``{name}`` placeholders for the fixtures'
    paths) and a regular expression the error message must match."""

    name: str
    args: tuple[str, ...]
    message: str
    env: Mapping[str, str] = field(default_factory=dict)


def base_args(files: Mapping[str, Path], cache: Path | None = None) -> list[str]:
    """A tiny run that would train: the cases replace or add one thing."""
    return [
        "debug=tiny",
        f"model.source={files['model']}",
        "data=local_file",
        f"data.source={files['good']}",
        "logger=none",
        f"paths.cache_dir={cache or files['cache']}",
    ]


def case_args(case: BadInput, files: Mapping[str, Path], cache: Path | None = None) -> list[str]:
    """The case's full argument list, placeholders filled in; a key the case sets replaces
    the base run's."""
    names = {k: str(v) for k, v in files.items()}
    own = [a.format(**names) for a in case.args]
    keys = {a.split("=", 1)[0].lstrip("+") for a in own}
    kept = [a for a in base_args(files, cache) if a.split("=", 1)[0] not in keys]
    return [*kept, *own]


def _trunc(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _write_gguf(path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((64, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build_fixtures(root: Path, *, env: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write every file the cases name under ``root``; returns placeholder -> path.

    Runs one real tiny training (a few seconds) for the checkpoint cases.
    """
    root.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(root / "model")
    good = root / "good.jsonl"
    good.write_text("".join(json.dumps(GOOD_ROW) + "\n" for _ in range(12)))
    packed = gzip.compress(good.read_bytes())
    (root / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (root / "latin1.jsonl").write_bytes(good.read_bytes().replace(b"bread", b"br\xe9ad"))
    (root / "missing.jsonl").write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    files: dict[str, Path] = {
        "root": root,
        "model": model,
        "good": good,
        "cache": root / "cache",
        "truncated": root / "truncated.jsonl.gz",
        "latin1": root / "latin1.jsonl",
        "missing": root / "missing.jsonl",
        "empty_dir": root / "empty",
        "a_file": root / "a_file",
        "fresh_run": root / "fresh_run",
    }
    files["empty_dir"].mkdir(exist_ok=True)
    files["a_file"].write_text("not a folder\n")
    weights_only = root / "weights_only"
    weights_only.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, weights_only / name)
    files["weights_only"] = weights_only
    no_template = root / "no_template"
    shutil.copytree(model, no_template, dirs_exist_ok=True)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    for path in no_template.glob("chat_template*"):
        path.unlink()
    files["no_template"] = no_template
    cut_weights = root / "cut_weights"
    shutil.copytree(model, cut_weights, dirs_exist_ok=True)
    _trunc(cut_weights / "model.safetensors", 0.6)
    files["cut_weights"] = cut_weights
    gguf = root / "cut.gguf"
    _write_gguf(gguf)
    _trunc(gguf, 0.5)
    files["cut_gguf"] = gguf
    # A finished tiny run (default loss and weighting), with its checkpoints.
    run_dir = root / "finished_run"
    done = run_train_cli(
        [*base_args(files), "save_model=false"], run_dir, env=dict(env or {}), timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"the fixture run failed:\n{done.stderr[-3000:]}")
    files["finished_run"] = run_dir
    files["ckpt"] = run_dir / "checkpoints" / "last.ckpt"
    cut_ckpt = root / "cut.ckpt"
    shutil.copy(files["ckpt"], cut_ckpt)
    _trunc(cut_ckpt, 0.5)
    files["cut_ckpt"] = cut_ckpt
    return files


def run_case(
    case: BadInput,
    files: Mapping[str, Path],
    run_dir: Path,
    *,
    cache: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``mrpo-train`` with the case's arguments in ``run_dir`` (unless the case names its
    own ``hydra.run.dir``) and reference cache ``cache`` (default: the fixtures')."""
    args = case_args(case, files, cache)
    if any(a.startswith("hydra.run.dir=") for a in args):
        run_dir = Path(next(a for a in args if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        args = [a for a in args if not a.startswith("hydra.run.dir=")]
    full_env = {**dict(env or {}), **case.env}
    return run_train_cli(args, run_dir, env=full_env, timeout=600)


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


CASES: Sequence[BadInput] = (
    # --- data files ---------------------------------------------------------------------
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
    BadInput("data_format", ("data.format=nope",), r"config error: data.format: unknown format"),
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
        r"config error: data.max_prompt_length: must be in \(0, data.max_length=96\)",
    ),
    BadInput("required_key", ("data.source=???",), r"config error: data.source: required value"),
    # --- plain values -------------------------------------------------------------------
    BadInput("seed", ("seed=-1",), r"config error: seed: must be in \[0, 2\*\*32\)"),
    BadInput("stage", ("stage=nope",), r"config error: stage: must be one of"),
    BadInput("beta", ("loss.beta=0",), r"config error: loss.beta: .* must be > 0"),
    BadInput(
        "loss_name", ("loss.name=nope",), r"config error: loss.name: unknown objective 'nope'"
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
        r"config error: weights.windw: option\(s\) \['windw'\] do not apply to weighting",
    ),
    BadInput(
        "weighting_name", ("weights.strategy=nope",), r"config error: weights.strategy: unknown"
    ),
    BadInput(
        "model_dtype", ("model.dtype=float8",), r"config error: model.dtype: unknown 'float8'"
    ),
    BadInput(
        "logger_mode", ("logger.mode=sometimes",), r"config error: logger.mode: must be one of"
    ),
    # --- references ---------------------------------------------------------------------
    BadInput(
        "num_refs",
        ("references=prompted", "references.num_refs=9"),
        r"config error: references.num_refs: must be between 1 and the pool size 4, got 9",
    ),
    BadInput(
        "reference_dtype",
        ("references=prompted", "references.num_refs=2", "references.pool.1.dtype=float8"),
        r"config error: references.pool.1.dtype: reference 'harmless': unknown dtype 'float8'",
    ),
    BadInput(
        "moving_reference_alpha",
        ("references.pool.0.source=moving", "references.pool.0.alpha=1.5"),
        r"config error: references.pool.0.alpha: reference 'self': must be in \(0, 1\], got 1.5",
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
        r"config error: references.pool.1.name: reference name must be a non-empty string",
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
        r"config error: references.lock_timeout_s: must be > 0 seconds",
    ),
    # --- model sources and weight files -------------------------------------------------
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
        r"config error: model.lora.r: LoRA r must be a positive integer",
    ),
    BadInput(
        "lora_dropout",
        ("model.lora.enabled=true", "model.lora.dropout=1.5"),
        r"config error: model.lora.dropout: LoRA dropout must be in \[0, 1\)",
    ),
    # --- optimization and the Trainer ---------------------------------------------------
    BadInput(
        "optimizer_value",
        ("optimizer.lr=-1",),
        r"config error: optimizer: torch.optim.AdamW refuses these arguments: .*learning rate",
    ),
    BadInput(
        "optimizer_target",
        ("optimizer._target_=torch.optim.Nope",),
        r"config error: optimizer._target_: cannot import 'torch.optim.Nope'",
    ),
    BadInput(
        "optimizer_argument",
        ("+optimizer.lrr=1",),
        r"config error: optimizer.lrr: is not an argument of torch.optim.AdamW",
    ),
    BadInput("scheduler_name", ("scheduler.name=nope",), r"config error: scheduler.name: "),
    BadInput(
        "warmup_ratio",
        ("scheduler.warmup_ratio=1.5",),
        r"config error: scheduler.warmup_ratio: must be in \[0, 1\)",
    ),
    BadInput(
        "trainer_argument",
        ("+trainer.nonsense=1",),
        r"config error: trainer.nonsense: is not a lightning.Trainer argument",
    ),
    BadInput(
        "trainer_precision",
        ("trainer.precision=banana",),
        r"config error: trainer.precision: this machine cannot run it",
    ),
    # --- callbacks, evaluation ----------------------------------------------------------
    BadInput(
        "monitor_never_logged",
        ("callbacks.checkpoint.monitor=val/nope",),
        r"config error: callbacks.checkpoint.monitor: 'val/nope' is never logged",
    ),
    BadInput(
        "checkpoint_mode",
        ("callbacks.checkpoint.mode=sideways",),
        r"config error: callbacks.checkpoint: .*sideways",
    ),
    BadInput(
        "checkpoint_option",
        ("+callbacks.checkpoint.every_n_epochs=2",),
        r"config error: callbacks.checkpoint.every_n_epochs: unknown option",
    ),
    BadInput(
        "nan_guard",
        ("callbacks.nan_guard.action=ignore",),
        r"config error: callbacks.nan_guard.action: must be one of \('stop', 'skip'\)",
    ),
    BadInput(
        "callback_target",
        ("+callbacks.extra._target_=nope.Nope",),
        r"config error: callbacks.extra._target_: cannot import 'nope.Nope'",
    ),
    BadInput("eval_task", ("eval.tasks=[nope]",), r"config error: eval.tasks: unknown task"),
    BadInput("eval_limit", ("eval.limit=0",), r"config error: eval.limit: must be a positive"),
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
    # --- folders ------------------------------------------------------------------------
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
    # --- checkpoints --------------------------------------------------------------------
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

if _no_gpu():  # on a GPU machine these inputs are good ones
    CASES = (
        *CASES,
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


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the case runs: offline, one thread, no data mirror."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MRPO_DATA_DIR": ""}
    return {**env, **dict(extra or {})}


# The loss types' and aggregations' refusals, from their own table.
CASES = (*CASES, *(BadInput(*case) for case in LOSS_CASES))
