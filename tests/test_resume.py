"""Long runs through the real command line: epochs, resumes at any point, run directories that
are never reused, and sweeps that survive a failing job.

Each test runs ``mrpo-train`` in subprocesses on a tiny model (real SIGKILLs, real files): 20
training pairs in batches of 4, so an epoch is 5 optimizer steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mrpo.compare.command import main as compare_main
from mrpo.compare.records import collect_runs, read_metrics
from mrpo.testing.runs import run_train_cli, tiny_run_args

pytestmark = pytest.mark.slow

COMMON = [
    "data.max_samples=24",
    "data.val_size=4",
    "data.batch_size=4",
    "trainer.max_steps=-1",
    "trainer.max_epochs=3",
    "save_model=false",
    "references=prompted",
    "references.num_refs=2",
    "weights=sliding_window",  # stateful: its window must survive a resume too
]
STEPS_PER_EPOCH = 5
FINAL_KEYS = ("final/val/loss", "final/val/rewards/accuracy", "final/val/policy_margin_accuracy")


@pytest.fixture
def args(tiny_model_dir: Path, hh_file: Path, tmp_path: Path) -> list[str]:
    return [*tiny_run_args(tiny_model_dir, hh_file, tmp_path / "cache"), *COMMON]


def run_multirun(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``mrpo-train -m <args>`` as a real process (W&B offline, one torch thread)."""
    cmd = [sys.executable, "-m", "mrpo.cli.train", "-m", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)


def run_ok(args: list[str], run_dir: Path) -> dict:
    done = run_train_cli(args, run_dir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def record(path: Path) -> list[str]:
    return [
        "+callbacks.extra.rec._target_=mrpo.testing.faults.RecordBatches",
        f"+callbacks.extra.rec.path={path}",
    ]


def kill_at(step: int) -> list[str]:
    return [
        "+callbacks.extra.kill._target_=mrpo.testing.faults.KillAtStep",
        f"+callbacks.extra.kill.step={step}",
    ]


@pytest.fixture
def uninterrupted(args: list[str], tmp_path: Path) -> tuple[Path, dict]:
    run_dir = tmp_path / "full"
    summary = run_ok([*args, *record(tmp_path / "batches.jsonl")], run_dir)
    return run_dir, summary


def assert_same_run(resumed_dir: Path, reference_dir: Path) -> None:
    reference, after = (
        json.loads((d / "summary.json").read_text()) for d in (reference_dir, resumed_dir)
    )
    assert after["global_step"] == reference["global_step"] == 3 * STEPS_PER_EPOCH
    for key in FINAL_KEYS:
        assert after[key] == pytest.approx(reference[key], abs=1e-5), key
    losses, reference_losses = (read_metrics(d)["train/loss"] for d in (resumed_dir, reference_dir))
    assert sorted(losses) == sorted(reference_losses) == list(range(3 * STEPS_PER_EPOCH))
    for step, value in reference_losses.items():
        assert losses[step] == pytest.approx(value, abs=1e-5), step


def test_each_epoch_trains_on_its_own_batch_order(uninterrupted, tmp_path: Path) -> None:
    lines = [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == list(range(3 * STEPS_PER_EPOCH))
    epochs = [[tuple(r["rows"]) for r in lines if r["epoch"] == e] for e in range(3)]
    assert all(len(e) == STEPS_PER_EPOCH for e in epochs)
    # Every epoch sees every training pair once, in an order of its own.
    assert all(
        sorted(i for batch in e for i in batch) == sorted(i for b in epochs[0] for i in b)
        for e in epochs
    )
    assert len({tuple(e) for e in epochs}) == 3
    # And last.ckpt is written at every epoch end, with no best checkpoint needed for it.
    run_dir, summary = uninterrupted
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert summary["status"] == "finished"


@pytest.mark.parametrize(
    ("kill_step", "extra"),
    [
        # The first step of the second epoch: the last checkpoint is the end of epoch 1.
        (STEPS_PER_EPOCH + 1, []),
        # The middle of epoch 2 of 3, with a checkpoint every 2 steps (the last at step 6).
        (8, ["callbacks.checkpoint.every_n_train_steps=2"]),
    ],
    ids=["after_epoch_boundary", "mid_epoch_2_of_3"],
)
def test_sigkill_then_resume_last_equals_the_uninterrupted_run(
    args: list[str], tmp_path: Path, kill_step: int, extra: list[str]
) -> None:
    reference_dir = tmp_path / "reference"
    run_ok([*args, *extra], reference_dir)
    killed_dir = tmp_path / "killed"
    killed = run_train_cli([*args, *extra, *kill_at(kill_step)], killed_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (killed_dir / "summary.json").exists()
    run_ok([*args, *extra, "ckpt_path=last"], killed_dir)
    assert_same_run(killed_dir, reference_dir)


def test_a_finished_run_resumed_with_more_epochs_trains_them(
    uninterrupted, args: list[str]
) -> None:
    run_dir, summary = uninterrupted
    longer = run_ok([*args, "trainer.max_epochs=4", "ckpt_path=last"], run_dir)
    assert longer["global_step"] == summary["global_step"] + STEPS_PER_EPOCH
    assert sorted(read_metrics(run_dir)["train/loss"]) == list(range(4 * STEPS_PER_EPOCH))
    # ckpt_path=best names a file of this run, passable as it is (no "=" in the name).
    bests = sorted((run_dir / "checkpoints").glob("best-step_*.ckpt"))
    assert bests and all("=" not in p.name for p in bests)


def test_a_run_stopped_by_max_steps_mid_epoch_resumes_the_rest_of_that_epoch(
    args: list[str], tmp_path: Path
) -> None:
    # Stopped at step 7 (epoch 2 of 3, 2 batches done): the epoch's end hook runs too, and a
    # checkpoint written there would resume with epoch 3, losing 3 batches of epoch 2. A
    # constant learning rate: the schedule's length is max_steps, which the two runs differ in.
    args = [*args, "scheduler=constant", "scheduler.warmup_ratio=0"]
    reference_dir = tmp_path / "reference"
    run_ok(args, reference_dir)
    stopped_dir = tmp_path / "stopped"
    first = run_ok([*args, "trainer.max_steps=7"], stopped_dir)
    assert first["global_step"] == 7
    run_ok([*args, "ckpt_path=last"], stopped_dir)
    assert_same_run(stopped_dir, reference_dir)


def test_a_rerun_in_a_used_directory_is_refused_and_changes_nothing(uninterrupted, args) -> None:
    run_dir, _ = uninterrupted
    # Hydra itself records every launch (.hydra/, and appends to the job's log, train.log).
    before = {
        p: p.stat().st_mtime_ns
        for p in run_dir.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.name != "train.log"
    }
    again = run_train_cli(args, run_dir)
    assert again.returncode == 2
    assert (
        "hydra.run.dir:" in again.stderr + again.stdout
        and "already holds a run" in again.stderr + again.stdout
    )
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # summary, config, metrics, checkpoints untouched


def test_two_runs_started_in_the_same_second_get_two_directories(
    args: list[str], tmp_path: Path
) -> None:
    # Default run directories (no hydra.run.dir): outputs/<task>/<date>_<time>_<6 hex digits>.
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "mrpo.cli.train", *args, f"paths.root_dir={root}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    # Started together: both take their run directory's name in the same second.
    procs = [
        subprocess.Popen(
            [*cmd, "trainer.max_epochs=1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    dirs = sorted((root / "outputs" / "train").iterdir())
    assert len(dirs) == 2
    assert all((d / "summary.json").is_file() for d in dirs)
    assert dirs[0].name.rsplit("_", 1)[0][:10] == dirs[1].name.rsplit("_", 1)[0][:10]


def test_a_multirun_goes_on_after_a_failed_job(args: list[str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # Job 2 of 4 hits a NaN loss at its second step; the others never reach their step.
    nan = [
        "+callbacks.extra.nan._target_=mrpo.testing.faults.NanLossAtStep",
        "+callbacks.extra.nan.step=50,51,1,52",
    ]
    done = run_multirun([*args, "trainer.max_epochs=1", *nan, f"hydra.sweep.dir={sweep}"])
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]  # every job ran, and the command says one failed
    assert "1 of 4 job(s) failed" in output and "Traceback" not in output
    for job in (0, 1, 3):
        assert json.loads((sweep / str(job) / "summary.json").read_text())["status"] == "finished"
    failed = json.loads((sweep / "2" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["failure"]["kind"] == "non-finite loss"
    assert failed["global_step"] == 1 and "partial/train/loss" in failed
    found = collect_runs([sweep])
    assert len(found.runs) == 3
    [skipped] = found.skipped
    assert skipped.path.name == "2" and skipped.reason.startswith("failed (non-finite loss)")
    assert compare_main([str(sweep)]) == 0


def test_the_optuna_sweeper_counts_a_failed_trial_and_goes_on(
    args: list[str], tmp_path: Path
) -> None:
    sweep = tmp_path / "optuna"
    done = run_multirun(
        [
            *args, "trainer.max_epochs=1", "hydra/sweeper=optuna_tpe", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.n_startup_trials=3",
            # a learning rate the optimizer refuses: the trials that draw it fail
            "optimizer.lr=choice(-1.0,1e-5)",
            f"hydra.sweep.dir={sweep}",
        ]
    )  # fmt: skip
    output = done.stdout + done.stderr
    statuses = [json.loads(p.read_text())["status"] for p in sorted(sweep.glob("*/summary.json"))]
    assert len(statuses) == 3 and "failed" in statuses and "finished" in statuses, output[-3000:]
    # The study went on past the failed trial and chose among the finished ones.
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["optimizer.lr"] == pytest.approx(1e-5)
    assert done.returncode == 1 and "job(s) failed" in output  # and the command says so
