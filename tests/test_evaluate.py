"""``mrpo-eval`` end to end on tiny models: results file, checkpoints, and config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mrpo.cli.evaluate import evaluate
from mrpo.cli.train import train
from mrpo.config import CONFIG_DIR, register_configs
from mrpo.errors import ConfigError
from mrpo.models import load_model
from support.evaldata import write_eval_data

SCORES = (
    "eval/gsm8k/strict_match",
    "eval/gsm8k/flexible_extract",
    "eval/truthfulqa/mc1",
    "eval/truthfulqa/mc2",
)


@pytest.fixture(scope="module")
def eval_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eval_data(tmp_path_factory.mktemp("evaldata"))


@pytest.fixture
def compose_eval(eval_data_dir: Path, tmp_path: Path):
    """Compose ``conf/eval.yaml`` for a tiny CPU evaluation in ``tmp_path`` (no W&B)."""

    def _compose(overrides: Sequence[str] = (), *, output_dir: Path | None = None) -> DictConfig:
        register_configs()
        base = [
            f"paths.data_dir={eval_data_dir}",
            f"paths.output_dir={output_dir or tmp_path / 'eval'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "logger=none",
            "eval.max_new_tokens=8",
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("eval", overrides=[*base, *overrides])

    return _compose


def test_model_source_writes_results_samples_and_record(
    compose_eval, tiny_model_dir: Path, tmp_path: Path
) -> None:
    returned = evaluate(compose_eval([f"model.source={tiny_model_dir}", "eval.limit=2"]))
    run_dir = tmp_path / "eval"
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results == json.loads(json.dumps(returned))
    assert results["model"] == str(tiny_model_dir) and results["checkpoint"] is None
    assert results["limit"] == 2 and results["tasks"] == ["gsm8k", "truthfulqa"]
    metrics = results["metrics"]
    for key in SCORES:
        assert 0.0 <= metrics[key] <= 1.0, key
    # limit=2 takes the first two questions of each fixture set (3 in each test split).
    assert metrics["eval/gsm8k/num_samples"] == 2 and metrics["eval/truthfulqa/num_samples"] == 2
    # Two questions, each with 3 MC1 and 3 MC2 choices: 12 scored continuations.
    assert metrics["eval/truthfulqa/num_requests"] == 12
    assert 0 < metrics["eval/gsm8k/generated_tokens"] <= 2 * 8
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [(s["eval"], s["index"]) for s in samples] == [
        ("gsm8k", 0),
        ("gsm8k", 1),
        ("truthfulqa", 0),
        ("truthfulqa", 1),
    ]
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "csv" / "attempt_0" / "metrics.csv").exists()


def test_a_quantized_model_is_scored_in_4_bit(compose_eval, tiny_4bit_model_dir: Path) -> None:
    from mrpo.cli.evaluate import load_evaluated_model
    from mrpo.config import EvalRunConfig, to_dataclass
    from mrpo.models.quantization import quantized_as

    overrides = [f"model.source={tiny_4bit_model_dir}", "model.quantization=nf4", "eval.limit=1"]
    cfg = to_dataclass(compose_eval([*overrides, "model.dtype=bfloat16"]), EvalRunConfig)
    model, _ = load_evaluated_model(cfg)
    assert quantized_as(model) == "nf4"
    metrics = evaluate(compose_eval([*overrides, "model.dtype=bfloat16"]))["metrics"]
    assert 0.0 <= metrics["eval/truthfulqa/mc2"] <= 1.0


def test_native_and_lm_eval_tasks_offline(
    compose_eval, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``mrpo-eval eval.tasks=[gsm8k, truthfulqa, tiny_mc]`` with a local lm-eval task YAML:
    scores under eval/<task>/..., lm-eval's records in samples.jsonl, its task info kept."""
    from support.harness import write_tiny_harness_tasks

    tasks = write_tiny_harness_tasks(tmp_path / "tasks")
    overrides = [
        f"model.source={tiny_model_dir}",
        "eval.limit=2",
        "eval.tasks=[gsm8k,truthfulqa,tiny_mc]",
        f"eval.harness.include_path=[{tasks}]",
        "eval.harness.include_defaults=false",
    ]
    results = evaluate(compose_eval(overrides))
    metrics = results["metrics"]
    assert {"eval/gsm8k/strict_match", "eval/truthfulqa/mc1", "eval/tiny_mc/acc"} <= set(metrics)
    assert metrics["eval/tiny_mc/num_samples"] == 2
    assert results["task_info"]["tiny_mc"]["backend"] == "lm-eval"
    run_dir = tmp_path / "eval"
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    lm = [s for s in samples if s["eval"] == "tiny_mc"]
    assert [s["doc_id"] for s in lm] == [0, 1] and all("resps" in s for s in lm)
    on_disk = json.loads((run_dir / "eval_results.json").read_text())
    assert on_disk["metrics"]["eval/tiny_mc/acc"] == metrics["eval/tiny_mc/acc"]


def test_lm_eval_task_without_data_is_refused_before_loading(
    compose_eval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: nobody/absent-set\noutput_type: multiple_choice\n"
    )
    cfg = compose_eval(
        [
            "model.source=/nonexistent/model",  # never reached: the task is refused first
            "eval.tasks=[hub_task]",
            f"eval.harness.include_path=[{tmp_path}]",
            "eval.harness.include_defaults=false",
        ]
    )
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as info:
        evaluate(cfg)
    assert str(info.value).startswith("eval.tasks: lm-eval task 'hub_task' cannot get its data")
    assert "nobody/absent-set" in str(info.value)


def test_ckpt_and_saved_model_dir_give_the_same_scores(
    compose_train, compose_eval, tiny_model_dir: Path, tmp_path: Path
) -> None:
    summary = train(compose_train(["trainer.max_steps=1", "optimizer.lr=0.05"]))
    run_dir = Path(summary["run_dir"])
    base = evaluate(compose_eval([f"model.source={tiny_model_dir}"], output_dir=tmp_path / "base"))
    from_ckpt = evaluate(
        compose_eval(
            [
                f"model.source={tiny_model_dir}",
                f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}",
            ],
            output_dir=tmp_path / "ckpt",
        )
    )
    from_dir = evaluate(
        compose_eval([f"checkpoint={run_dir / 'model'}"], output_dir=tmp_path / "dir")
    )
    assert from_dir["model"] == str(run_dir / "model")
    for key in SCORES:
        assert from_ckpt["metrics"][key] == pytest.approx(from_dir["metrics"][key], abs=1e-6)
    # The trained weights were really loaded: TruthfulQA's MC2 moved away from the base model's.
    mc2 = "eval/truthfulqa/mc2"
    assert from_ckpt["metrics"][mc2] != pytest.approx(base["metrics"][mc2], abs=1e-7)
    assert from_ckpt["metrics"][mc2] == pytest.approx(from_dir["metrics"][mc2], abs=1e-6)


def test_lora_ckpt_needs_the_runs_lora_settings(
    compose_train, compose_eval, tiny_model_dir: Path
) -> None:
    summary = train(
        compose_train(["model=lora", f"model.source={tiny_model_dir}", "model.lora.r=4"])
    )
    ckpt = Path(summary["run_dir"]) / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"^checkpoint: .*LoRA adapter weights.*model.lora.r=4"):
        evaluate(compose_eval([f"model.source={tiny_model_dir}", f"checkpoint={ckpt}"]))
    merged = evaluate(compose_eval([f"checkpoint={ckpt.parent.parent / 'model'}"]))
    from_ckpt = evaluate(
        compose_eval(
            ["model=lora", f"model.source={tiny_model_dir}", "model.lora.r=4", f"checkpoint={ckpt}"]
        )
    )
    for key in SCORES:
        assert from_ckpt["metrics"][key] == pytest.approx(merged["metrics"][key], abs=1e-6)


def test_ckpt_whose_weights_do_not_fit_fails_naming_the_key(
    compose_eval, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # The base model's own tensors under other names: every expected tensor is missing.
    state = {f"policy.x{k}": v for k, v in load_model(str(tiny_model_dir)).state_dict().items()}
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(ConfigError, match=r"^checkpoint: .*do not fit the base model.*missing"):
        evaluate(compose_eval([f"model.source={tiny_model_dir}", f"checkpoint={ckpt}"]))


def test_unreadable_ckpt_fails_naming_the_key(compose_eval, tmp_path: Path) -> None:
    ckpt = tmp_path / "notes.ckpt"
    ckpt.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"^checkpoint: could not read .*notes\.ckpt"):
        evaluate(compose_eval([f"checkpoint={ckpt}"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.tasks=[gsm8k,no_such_task]"], r"^eval\.tasks: unknown task 'no_such_task'"),
        (["checkpoint=/no/such/run/last.ckpt"], r"^checkpoint: /no/such/run/last\.ckpt does not"),
        (["eval.limit=0"], r"^eval\.limit: must be >= 1 or null, got 0"),
        (["model.source=./no/such/model"], r"^model\.source: .*no such directory"),
    ],
)
def test_bad_config_fails_naming_the_key_before_loading(
    compose_eval, overrides: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate(compose_eval(overrides))
    assert not (tmp_path / "eval").exists()  # nothing was written, nothing loaded


def test_cli_config_error_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrpo.cli.evaluate",
            "logger=none",
            "eval.tasks=[nope]",
            f"hydra.run.dir={tmp_path / 'cli'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = proc.stdout + proc.stderr  # Hydra's console log handler writes to stdout
    assert proc.returncode == 2, output
    errors = [line for line in output.splitlines() if "config error" in line]
    assert len(errors) == 1 and "eval.tasks: unknown task 'nope'" in errors[0]
    assert "Traceback" not in output
