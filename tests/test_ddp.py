"""Data parallel training: 2 CPU processes (DDP, gloo) step like 1 process, same global batch.

Each rank takes every other batch of the same length-grouped order, so 2 ranks with batch size
B and 1 process with batch size B and 2-step gradient accumulation see the same pairs in each
optimizer step; DDP averages the ranks' gradients, accumulation averages the micro-batches'.
The final weights and validation metrics must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mrpo.testing.runs import run_train_cli

pytestmark = pytest.mark.slow

COMMON = [
    "debug=tiny",
    "data=local_file",
    "data.max_samples=24",
    "data.val_size=4",  # 2 validation batches of 2: one per rank
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "trainer.max_steps=-1",
    "trainer.max_epochs=1",  # 20 training pairs: 10 batches, 5 optimizer steps
    "trainer.accelerator=cpu",
    "references=prompted",
    "references.num_refs=2",
    "weights=arwc",  # stateless: a windowed strategy would see only its rank's batches
    "save_model=true",
    "logger=none",
]


def run_train(args: list[str], run_dir: Path) -> dict:
    done = run_train_cli(args, run_dir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    base = [
        *COMMON,
        f"model.source={tiny_model_dir}",
        f"data.source={hh_file}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    single = run_train([*base, "trainer.accumulate_grad_batches=2"], tmp_path / "single")
    ddp = run_train([*base, "trainer=ddp", "trainer.accelerator=cpu"], tmp_path / "ddp")

    assert single["global_step"] == ddp["global_step"] == 5
    for key in ("final/val/loss", "final/val/rewards/margin", "final/val/policy_margin_accuracy"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-5), key
    weights = [load_file(Path(s["model_dir"]) / "model.safetensors") for s in (single, ddp)]
    initial = load_file(tiny_model_dir / "model.safetensors")
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-5, rtol=1e-4)
    # ... and training did move them.
    assert any(not torch.equal(weights[0][n], initial[n]) for n in initial)
