"""The memory plan against the measured peak: short real training runs of the packaged model.

Each arm is one ``mrpo-train`` process: two epochs, so every batch (the plan's largest among
them) runs after the optimizer's first step, of the packaged SmolLM2-135M-Instruct on HH-RLHF
harmless-base pairs from ``$MRPO_DATA_DIR``; float32 on the CPU, no checkpoints, no W&B, no
final model. Its ``summary.json`` holds the plan's estimate (``memory_plan``, made before any
model loaded) and the measured peak (``throughput.peak_memory_gb``: the process's peak resident
memory up to its last training step; on a GPU ``max_memory_allocated``). The
process's peak over its whole life (``wait4``) is printed too.

Arms: ``base`` (full fine-tuning, cached K=1 reference), ``checkpointing``
(``model.gradient_checkpointing=true``), ``lora`` (``model=lora``), ``live_k3`` (three
prompted references scored live every step: one more copy of the weights).

Usage::

    python benchmarks/bench_memory_plan.py                 # every arm, one after another
    python benchmarks/bench_memory_plan.py --arms base,lora --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ARMS: dict[str, list[str]] = {
    "base": [],
    "checkpointing": ["model.gradient_checkpointing=true"],
    "lora": ["model=lora"],
    "live_k3": ["references=prompted", "references.num_refs=3", "references.mode=live"],
}


_NOT_PARTS = ("capacity_gb", "estimated_peak_gb", "measured_peak_gb")


def common_args(args: argparse.Namespace) -> list[str]:
    """The settings every arm shares (module doc)."""
    return [
        "data=hh_harmless",
        f"data.max_samples={args.pairs + 8}",
        "data.val_size=8",
        f"data.batch_size={args.batch_size}",
        "data.max_length=512",
        # The plan counts the largest batch of the training pairs at a step that holds the
        # optimizer's states: two epochs meet every batch after the first optimizer step.
        f"trainer.max_steps={args.steps if args.steps else -1}",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
        "eval=none",
        "logger=none",
        "save_model=false",
    ]


def run_arm(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One arm's process: its summary's plan and peak, and its whole-life peak RSS."""
    run_dir = scratch / name
    cmd = [sys.executable, "-m", "mrpo.cli.train", *common_args(args), *ARMS[name]]
    cmd.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    with open(scratch / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        tail = (scratch / f"{name}.log").read_text()[-2000:]
        raise SystemExit(f"arm {name} failed ({status}):\n{tail}")
    summary = json.loads((run_dir / "summary.json").read_text())
    plan = summary["memory_plan"]
    return {
        "estimated_gb": plan["estimated_peak_gb"],
        "measured_gb": summary["throughput"]["peak_memory_gb"],
        "process_gb": usage.ru_maxrss / 2**20,  # kilobytes on Linux
        "parts": {k: v for k, v in plan.items() if k.endswith("_gb") and k not in _NOT_PARTS},
    }


def report(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'arm':<15}{'plan GB':>9}{'peak GB':>9}{'error':>8}{'process GB':>12}")
    for name, r in results.items():
        error = r["estimated_gb"] / r["measured_gb"] - 1
        print(
            f"{name:<15}{r['estimated_gb']:>9.2f}{r['measured_gb']:>9.2f}{error:>+8.1%}"
            f"{r['process_gb']:>12.2f}"
        )
    print("\nplan components (GB):")
    for name, r in results.items():
        parts = ", ".join(f"{k.removesuffix('_gb')} {v:.2f}" for k, v in r["parts"].items())
        print(f"  {name:<13} {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
    parser.add_argument(
        "--steps", type=int, default=0, help="training steps per arm (0: two epochs)"
    )
    parser.add_argument("--pairs", type=int, default=12, help="training pairs")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        for name in args.arms.split(","):
            results[name] = run_arm(name, args, Path(scratch))
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    report(results)


if __name__ == "__main__":
    main()
