"""What ``mrpo-train`` prints and writes, through the real command line on a tiny model: one
hardware line and no advertisements, the plan line with the run's real figures, the model
card with the run's real values, and the refusal of a run too large for the machine."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import ModelCard

from mrpo.testing.runs import run_train_cli, tiny_run_args
from support.bad_inputs.case import MODEL_LOADED, environment

pytestmark = pytest.mark.slow

PLAN = re.compile(
    r"plan: (\d+)/(\d+)/(\d+) pairs \(train/val/test, (\d+) truncated\) \| "
    r"K=(\d+): (.*) \| (\d+) steps \| layout (\S+) \| memory ~([\d.]+) GB of ([\d.]+) GB "
    r"\((\w+)\) \| time (\S+ ?\S*) \("
)


def _args(model: Path, data: Path, cache: Path) -> list[str]:
    return [
        *tiny_run_args(model, data, cache),
        "references=prompted",
        "references.num_refs=2",
        "optimizer.lr=3e-4",
    ]


@pytest.fixture(scope="module")
def runs(
    tiny_model_dir: Path, hh_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Two runs sharing a cache: the second finds the references cached and a speed."""
    root = tmp_path_factory.mktemp("plan")
    out = {"cache": root / "cache"}
    for name in ("first", "second"):
        args = _args(tiny_model_dir, hh_file, root / "cache")
        done = run_train_cli(args, root / name, env=environment())
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        out[name] = (done.stdout + done.stderr, root / name)
    return out


def _plan(output: str) -> re.Match[str]:
    lines = [line for line in output.splitlines() if "plan: " in line]
    assert len(lines) == 1, lines
    found = PLAN.search(lines[0])
    assert found, lines[0]
    return found


def test_console_has_one_hardware_line_and_no_advertisement(runs: dict[str, Any]) -> None:
    for name in ("first", "second"):
        output = runs[name][0]
        assert len([line for line in output.splitlines() if "hardware: " in line]) == 1
        assert "GPU available" not in output and "TPU available" not in output
        assert "litlogger" not in output and "Tip:" not in output
        assert "weights_only" not in output and "LeafSpec" not in output


def test_plan_line_holds_the_runs_real_figures(runs: dict[str, Any]) -> None:
    output, run_dir = runs["first"]
    summary = json.loads((run_dir / "summary.json").read_text())
    plan = _plan(output)
    data = summary["data"]
    assert [int(plan.group(i)) for i in (1, 2, 3, 4)] == [
        data["train_pairs"],
        data["val_pairs"],
        data["test_pairs"],
        data["truncated"],
    ]
    assert int(plan.group(5)) == 2 and plan.group(6) == "self (to score), harmless (to score)"
    assert int(plan.group(7)) == summary["global_step"] == 2
    assert plan.group(8) == "shared" and plan.group(11) == "cpu"
    memory = summary["memory_plan"]
    assert float(plan.group(9)) == pytest.approx(memory["estimated_peak_gb"], abs=0.051)
    assert memory["measured_peak_gb"] == summary["throughput"]["peak_memory_gb"]
    assert plan.group(12) == "unknown"  # no speed measured with this cache yet
    # The second run finds both references cached and the speed the first one measured.
    again = _plan(runs["second"][0])
    assert again.group(6) == "self (cached), harmless (cached)"
    assert again.group(12).startswith("~")


def test_model_card_holds_the_runs_values(
    runs: dict[str, Any], tiny_model_dir: Path, hh_file: Path
) -> None:
    _, run_dir = runs["first"]
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    text = (run_dir / "model" / "README.md").read_text()
    header = ModelCard.load(run_dir / "model" / "README.md").data
    assert header.base_model == str(tiny_model_dir)
    assert header.library_name == "transformers"
    assert header.datasets == [str(hh_file)]
    assert {"mrpo", "weights-arwc", "k-2"} <= set(header.tags)
    # The references: names, and the cache keys of the entries this run filled.
    entries = {p.stem for p in (runs["cache"] / "reflogps").glob("*.safetensors")}
    rows = [line for line in text.splitlines() if line.startswith(("| self |", "| harmless |"))]
    assert len(rows) == 2
    keys = {row.strip(" |").split(" | ")[-1] for row in rows}
    assert keys <= entries and len(keys) == 2  # the two entries of the first run's rows
    # The data, hyperparameters, scores, versions and command.
    for value in (summary["data"]["train_fingerprint"], summary["data"]["val_fingerprint"]):
        assert f"| {value} |" in text
    assert f"| data.batch_size | {config['data']['batch_size']} |" in text
    assert f"| optimizer.lr | {config['optimizer']['lr']:.4g} |" in text
    assert f"| loss.beta | {config['loss']['beta']:.4g} |" in text
    assert f"| optimizer steps taken | {summary['global_step']} |" in text
    accuracy = summary["final/val/rewards/accuracy"]
    assert re.search(rf"\| val/rewards/accuracy \| [^|]+ \| {accuracy:.4g} \|", text)
    assert f"| torch | {summary['environment']['packages']['torch']} |" in text
    command = text.split("```bash\n")[1].split("\n```")[0]
    assert command.startswith("mrpo-train ")
    for arg in _args(tiny_model_dir, hh_file, runs["cache"]):
        assert arg in command


def test_a_run_too_large_for_the_machine_is_refused_before_any_model_loads(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    # The tiny model's files, with a config.json of a 200-layer, 8192-wide decoder.
    giant = tmp_path / "giant"
    shutil.copytree(tiny_model_dir, giant)
    config = json.loads((giant / "config.json").read_text())
    config.update(num_hidden_layers=200, hidden_size=8192, intermediate_size=28672)
    config.update(num_attention_heads=64, num_key_value_heads=8, head_dim=128)
    (giant / "config.json").write_text(json.dumps(config))
    args = _args(giant, hh_file, tmp_path / "cache")
    done = run_train_cli(args, tmp_path / "run", env=environment())
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "force_memory" in errors[0]
    for key in ("model.gradient_checkpointing=true", "data.batch_size", "model=lora"):
        assert key in errors[0]
    assert not any(line in output for line in MODEL_LOADED)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing scored
