"""The device check's plumbing on the CPU: its dry run, and how stages fail or run out of time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mrpo.models.parallel import FSDP_RUNS_ON_CPU

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import device_check  # noqa: E402  (a script in benchmarks/, not a package module)

STAGES = [
    "environment", "train_135m", "packing", "fsdp2_1gpu", "train_0.5b", "train_1b", "fused_head",
    "qlora_7b", "eval_gsm8k_50", "eval_truthfulqa_all", "reference_cache", "kstudy",
]  # fmt: skip

needs_mirror = pytest.mark.skipif(
    not os.environ.get("MRPO_DATA_DIR"), reason="needs the data mirror ($MRPO_DATA_DIR)"
)


@needs_mirror
def test_the_dry_run_plans_every_stage_and_checks_its_configs(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    code = device_check.main(["--dry-run", "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    report = json.loads(out.read_text())
    # Checked on this CPU: where torch cannot run FSDP on CPUs (2.6, the floor), the FSDP
    # stage's config is refused by name (a GPU runs it).
    refused = [] if FSDP_RUNS_ON_CPU else ["fsdp2_1gpu"]
    assert code == (1 if refused else 0), report
    assert [k for k in report if k in STAGES] == STAGES
    assert report["dry_run"] is True and report["failed_stages"] == refused
    assert report["environment"]["status"] == "ok"
    assert report["environment"]["packaged_model"].endswith(".gguf")
    for stage in refused:
        assert "trainer.strategy.name: 'fsdp' on CPUs needs a torch" in report[stage]["error"]
    for stage in STAGES[1:]:
        if stage not in refused:
            assert report[stage]["status"] == "planned", stage
    for stage in ("fsdp2_1gpu", "qlora_7b", "reference_cache", "eval_gsm8k_50", "kstudy"):
        if stage not in refused:
            assert report[stage]["checks"] == "passed"
    if not refused:
        assert "'name': 'fsdp'" in report["fsdp2_1gpu"]["strategy"]
    assert report["eval_truthfulqa_all"]["tasks"] == ["truthfulqa"]
    assert report["reference_cache"]["rows"] > 200
    for stage in ("train_135m", "train_0.5b", "train_1b"):
        assert report[stage]["settings"]["precision"] == "bf16"
        assert report[stage]["weights"] == "random"
        assert {"trl_precompute", "trl_liger", "mrpo_cached"} <= set(report[stage]["arms"])
    assert "mrpo_packflex" in report["train_135m"]["arms"]
    assert report["qlora_7b"]["architecture"] == "qwen2.5-7b"
    assert report["kstudy"]["weights"] == "real" and report["kstudy"]["pairs"] == 2000


def test_stages_can_be_picked_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    assert device_check.main(["--dry-run", "--stages", "environment", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [k for k in report if k in STAGES] == ["environment"]
    with pytest.raises(SystemExit) as exit_info:
        device_check.main(["--dry-run", "--stages", "environment,warp_drive"])
    assert exit_info.value.code == 2


def test_a_failing_stage_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(ctx: device_check.Context) -> dict:
        raise RuntimeError("no GPU here")

    stages = [
        device_check.Stage("first", 1, broken, broken),
        device_check.Stage("second", 1, lambda ctx: {"status": "ok", "x": 1}, broken),
        device_check.Stage("late", 100, lambda ctx: {"status": "ok"}, broken),
    ]
    monkeypatch.setattr(device_check, "stages", lambda: stages)
    ctx = device_check.Context(dry_run=False, work=tmp_path, deadline=time.monotonic() + 20)
    report = device_check.run_stages(ctx)
    assert report["first"]["status"] == "error"
    assert report["first"]["error"] == "RuntimeError: no GPU here"
    assert report["second"]["status"] == "ok" and report["second"]["x"] == 1
    # Less than half its budget left: skipped, not started.
    assert report["late"] == {"status": "skipped", "reason": "the time budget ran out"}


@pytest.mark.slow
@needs_mirror
def test_the_shell_script_dry_run_prints_one_json(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(BENCH / "device_check.sh"), "--dry-run", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["failed_stages"] == [] and set(STAGES) <= set(report)
