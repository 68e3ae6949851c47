"""Faults survived by real ``mrpo-train`` processes: SIGKILL and resume, W&B down, NaN losses.

Each test runs the command line in a subprocess on a tiny model (real signals, real files);
the reference-cache faults (killed writers, racing jobs) are in test_refcache.py.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch

from mrpo.compare.records import read_metrics
from mrpo.testing.runs import run_train_cli

pytestmark = pytest.mark.slow

# 22 training pairs in batches of 2: one epoch is 11 steps; a checkpoint every 2 steps.
COMMON = [
    "debug=tiny",
    "data=local_file",
    "data.max_samples=24",
    "data.val_size=2",
    "trainer.max_steps=-1",
    "trainer.max_epochs=1",
    "callbacks.checkpoint.every_n_train_steps=2",
    "save_model=false",
    "references=prompted",
    "references.num_refs=2",
    "weights=sliding_window",
]
FINAL_KEYS = ("final/val/loss", "final/val/rewards/accuracy", "final/val/policy_margin_accuracy")


@pytest.fixture
def base_args(tiny_model_dir: Path, hh_file: Path, tmp_path: Path) -> list[str]:
    return [
        *COMMON,
        f"model.source={tiny_model_dir}",
        f"data.source={hh_file}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def wandb_run_ids(run_dir: Path) -> set[str]:
    """Run ids of the W&B offline runs in ``run_dir`` (``offline-run-<time>-<id>``)."""
    return {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(
    base_args: list[str], tmp_path: Path
) -> None:
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = run_train_cli(base_args, full_dir)
    assert full.returncode == 0, full.stderr[-3000:]

    kill = [
        "+callbacks.extra.kill._target_=mrpo.testing.faults.KillAtStep",
        "+callbacks.extra.kill.step=5",
    ]
    killed = run_train_cli([*base_args, *kill], killed_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (killed_dir / "summary.json").exists()
    last = torch.load(killed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4  # the step-5 checkpoint never got written

    resumed = run_train_cli([*base_args, "ckpt_path=last"], killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference, after = summary_of(full_dir), summary_of(killed_dir)
    assert after["global_step"] == reference["global_step"] == 11
    for key in FINAL_KEYS:
        assert after[key] == pytest.approx(reference[key], abs=1e-5), key
    losses, reference_losses = (read_metrics(d)["train/loss"] for d in (killed_dir, full_dir))
    assert sorted(losses) == sorted(reference_losses) == list(range(11))
    for step, value in reference_losses.items():
        assert losses[step] == pytest.approx(value, abs=1e-5), step
    # Nothing of the killed attempt is lost: its steps stay in their own CSV record.
    attempts = sorted(p.parent.name for p in (killed_dir / "csv").glob("*/metrics.csv"))
    assert attempts == ["attempt_0", "attempt_1"]
    # One W&B run id across both attempts.
    run_id = (killed_dir / "wandb_run_id.txt").read_text().strip()
    assert wandb_run_ids(killed_dir) == {run_id}


def test_wandb_that_cannot_start_online_falls_back_to_offline(
    base_args: list[str], tmp_path: Path
) -> None:
    env = {
        "WANDB_MODE": "",  # unset: the config's mode decides
        "WANDB_API_KEY": "x" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # nothing listens there
    }
    args = [*base_args, "trainer.max_steps=2", "logger.mode=online", "logger.init_timeout=5"]
    run = run_train_cli(args, tmp_path / "run", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "W&B could not start online" in run.stdout + run.stderr
    summary = summary_of(tmp_path / "run")
    assert summary["global_step"] == 2
    assert Path(summary["wandb_dir"]).name.startswith("offline-run-")


def test_nan_loss_stops_naming_step_and_batch_and_keeps_the_last_good_checkpoint(
    base_args: list[str], tmp_path: Path
) -> None:
    nan = [
        "+callbacks.extra.nan._target_=mrpo.testing.faults.NanLossAtStep",
        "+callbacks.extra.nan.step=5",
    ]
    run = run_train_cli([*base_args, *nan], tmp_path / "stop")
    assert run.returncode == 3, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "training stopped: non-finite loss (nan) at global step 5, batch 5" in log
    assert "Traceback" not in log
    last = torch.load(tmp_path / "stop" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())

    skip = run_train_cli([*base_args, *nan, "nan_guard.action=skip"], tmp_path / "skip")
    assert skip.returncode == 0, skip.stderr[-3000:]
    skipped = read_metrics(tmp_path / "skip")["train/skipped_batches"]
    assert min(skipped) == 5 and set(skipped.values()) == {1.0}  # one skip, at step 5
    losses = read_metrics(tmp_path / "skip")["train/loss"]
    assert all(math.isfinite(v) for s, v in losses.items() if s != 5)
    # Every batch counts as a step (the skipped one leaves the weights alone): 11 in all.
    assert summary_of(tmp_path / "skip")["global_step"] == 11


def test_same_seed_and_config_give_the_same_metrics(base_args: list[str], tmp_path: Path) -> None:
    args = [*base_args, "trainer.max_steps=3", "logger=none"]
    first, second = (run_train_cli(args, tmp_path / name) for name in ("a", "b"))
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    a, b = summary_of(tmp_path / "a"), summary_of(tmp_path / "b")
    for key in FINAL_KEYS:
        assert a[key] == b[key], key
    assert read_metrics(tmp_path / "a")["train/loss"] == read_metrics(tmp_path / "b")["train/loss"]
    assert a["data"]["train_fingerprint"] == b["data"]["train_fingerprint"]
