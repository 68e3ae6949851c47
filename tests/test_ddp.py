"""Data parallel training: 2 CPU processes (DDP, gloo) step like 1 process, same global batch.

Each rank takes every other batch of the same length-grouped order, so 2 ranks with batch size
B and 1 process with batch size B and 2-step gradient accumulation see the same pairs in each
optimizer step; DDP averages the ranks' gradients, accumulation averages the micro-batches'.
The final weights and validation metrics must agree.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mrpo.testing.runs import run_train_cli, tiny_run_args, write_hh_pairs

pytestmark = pytest.mark.slow

COMMON = [
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
]


def run_train(args: list[str], run_dir: Path, env: dict[str, str] | None = None) -> dict:
    done = run_train_cli(args, run_dir, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def base_args(model_dir: Path, data_file: Path, cache: Path) -> list[str]:
    return [*tiny_run_args(model_dir, data_file, cache), *COMMON]


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path, hh_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process, 2-step gradient accumulation: the run every data-parallel run must match."""
    root = tmp_path_factory.mktemp("single")
    args = [
        *base_args(tiny_model_dir, hh_file, root / "cache"),
        "trainer.accumulate_grad_batches=2",
    ]
    return run_train(args, root / "run")


def assert_same_training(single: dict, ddp: dict, initial_dir: Path, steps: int = 5) -> None:
    assert single["global_step"] == ddp["global_step"] == steps
    for key in ("final/val/loss", "final/val/rewards/margin", "final/val/policy_margin_accuracy"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-5), key
    weights = [load_file(Path(s["model_dir"]) / "model.safetensors") for s in (single, ddp)]
    initial = load_file(initial_dir / "model.safetensors")
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-5, rtol=1e-4)
    # ... and training did move them.
    assert any(not torch.equal(weights[0][n], initial[n]) for n in initial)


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(
    single: dict, tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    args = [*base_args(tiny_model_dir, hh_file, tmp_path / "cache"), "trainer=ddp"]
    ddp = run_train([*args, "trainer.accelerator=cpu"], tmp_path / "ddp")
    assert_same_training(single, ddp, tiny_model_dir)
    # Lightning starts rank 1 when training begins: rank 0 scored every reference row alone.
    assert ddp["reference_cache"]["forward_passes"] == single["reference_cache"]["forward_passes"]


def test_ddp_with_packed_token_budget_batches_matches_one_process(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Batches of varying size (a token budget), the prompt shared, packed rows: 2 ranks still
    step like 1 process accumulating 2 batches (DDP averages the ranks' per-pair mean losses as
    accumulation averages the batches')."""
    # 26 rows: 22 training pairs cut into 8 batches of 3, 3, 3, 3, 1, 3, 3, 3 pairs (~100 tokens
    # a pair), an even number so that no rank repeats a batch.
    data = write_hh_pairs(tmp_path / "pairs.jsonl", 26)
    args = [
        *base_args(tiny_model_dir, data, tmp_path / "cache"),
        "data.max_samples=26",
        "data.packing=true",
        "data.max_tokens_per_batch=330",
    ]
    single = run_train([*args, "trainer.accumulate_grad_batches=2"], tmp_path / "single")
    assert single["throughput"]["batches"] == 8 and single["throughput"]["pairs"] == 22
    ddp = run_train([*args, "trainer=ddp", "trainer.accelerator=cpu"], tmp_path / "ddp")
    assert ddp["throughput"]["batches"] == 4  # rank 0's half
    assert_same_training(single, ddp, tiny_model_dir, steps=4)


def test_torchrun_ranks_split_reference_scoring_and_train_like_one_process(
    single: dict, tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "torchrun"
    args = [*base_args(tiny_model_dir, hh_file, tmp_path / "cache"), "trainer=ddp"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "mrpo.cli.train",
        *args,
        "trainer.accelerator=cpu",
        f"hydra.run.dir={run_dir}",  # every rank must write to the same run directory
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ddp = json.loads((run_dir / "summary.json").read_text())
    assert_same_training(single, ddp, tiny_model_dir)
    # Both ranks started together: rank 0 scored half of each reference's rows (24 rows in
    # batches of 8: 2 forward passes for its 12 against 3 for all 24, for each of 2 references).
    assert single["reference_cache"]["forward_passes"] == 2 * 3
    assert ddp["reference_cache"]["forward_passes"] == 2 * 2
    assert ddp["reference_cache"]["misses"] == 2
    assert not list((tmp_path / "cache" / "reflogps" / "shards").glob("*/*.safetensors"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_non_finite_loss_on_one_rank_is_skipped_by_both(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    # Rank 1's batch at step 2 is poisoned; rank 0's is fine. Both must skip that step (a rank
    # skipping alone would wait forever in the gradient all-reduce, or part the weights).
    run_dir = tmp_path / "torchrun"
    args = [
        *base_args(tiny_model_dir, hh_file, tmp_path / "cache"),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "nan_guard.action=skip",
        "+callbacks.extra.nan._target_=mrpo.testing.faults.NanLossAtStep",
        "+callbacks.extra.nan.step=2",
        "+callbacks.extra.nan.rank=1",
        f"hydra.run.dir={run_dir}",
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "mrpo.cli.train", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 5  # the skipped batch still counts as a step
    # Rank 0 logs: its own loss was finite at step 2, yet it skipped.
    from mrpo.compare.records import read_metrics

    skipped = read_metrics(run_dir)["train/skipped_batches"]
    assert set(skipped.values()) == {1.0} and min(skipped) == 2
