"""The device check: one run of mrpo's large-scale path on one GPU, one JSON of figures.

Run by ``benchmarks/device_check.sh`` (which installs the project from its own files when it is
not importable yet). Offline: the packaged SmolLM2-135M-Instruct and the data mirror
(``$MRPO_DATA_DIR``) only; nothing is downloaded. Stages, each in its own process, within one
time budget (``--budget-s``, 540 s: later stages are skipped, not cut, when it runs out):

- ``environment``: GPU, torch/CUDA, optional packages;
- ``train_vs_trl``: bf16 training tokens/s and peak GPU memory of mrpo (cached reference) and
  TRL's DPOTrainer (``precompute_ref_log_probs``), ``bench_trl.py``'s settings on the packaged
  model (skipped when trl is not installed);
- ``fused_head``: mrpo's fused LM head against its logits path (``mrpo_logits``), same run;
- ``fsdp_1gpu``: ``mrpo-train trainer=fsdp trainer.devices=1``, a few steps and a sharded
  checkpoint;
- ``qlora_4bit``: ``mrpo-train model=qlora trainer=gpu``, a few steps;
- ``eval_gsm8k_50`` and ``eval_truthfulqa_all``: ``mrpo-eval`` wall time, GSM8K on 50
  questions, TruthfulQA MC on all 817;
- ``reference_cache``: ``stage=cache`` into an empty cache: reference rows scored per second.

``--dry-run`` checks the plumbing on a CPU in seconds: every stage's command is built, every
training and evaluation config is composed and passes mrpo's config checks (on the CPU), the
packaged model and the mirror files are found, and the JSON has every stage, marked
``planned``; nothing is trained or scored.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
BUDGET_S = 540.0  # 9 minutes
OPTIONAL_PACKAGES = ("bitsandbytes", "deepspeed", "trl")
PACKAGED = "packaged:smollm2-135m-instruct"

# A short run on HH-RLHF harmless-base from the mirror: 64 rows, 8 validation, 10 steps.
SMALL_RUN = [
    f"model.source={PACKAGED}",
    "data=hh_harmless",
    "data.max_samples=64",
    "data.val_size=8",
    "data.max_length=256",
    "data.max_prompt_length=128",
    "data.batch_size=4",
    "trainer.max_steps=10",
    "trainer.enable_progress_bar=false",
    "eval=none",
    "logger=none",
    "save_model=false",
]


@dataclass
class Context:
    """Where and how the stages run."""

    dry_run: bool
    work: Path
    deadline: float
    python: str = sys.executable
    results: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Stage:
    """One figure-producing step: ``run(ctx)`` returns its figures; ``plan(ctx)`` what a dry
    run checks instead (both return a dict that goes into the JSON under ``name``)."""

    name: str
    budget_s: float
    run: Callable[[Context], dict[str, Any]]
    plan: Callable[[Context], dict[str, Any]]


# --- commands ----------------------------------------------------------------------------


def train_overrides(name: str, extra: Sequence[str], ctx: Context) -> list[str]:
    run_dir = ctx.work / name
    return [*SMALL_RUN, *extra, f"paths.cache_dir={ctx.work / 'cache'}", f"hydra.run.dir={run_dir}"]


def module_command(ctx: Context, peak_file: Path, module: str, args: Sequence[str]) -> list[str]:
    return [ctx.python, str(BENCH_DIR / "peak_memory.py"), str(peak_file), module, *args]


def run_module(ctx: Context, name: str, module: str, args: Sequence[str]) -> dict[str, Any]:
    """Run ``module`` with ``args`` in a child process; its wall time, exit and peak memory."""
    peak_file = ctx.work / f"{name}.peak.json"
    log_file = ctx.work / f"{name}.log"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with log_file.open("w") as log:
        done = subprocess.run(
            module_command(ctx, peak_file, module, args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=max(ctx.remaining(), 1.0),
            check=False,
        )
    seconds = time.perf_counter() - start
    peak = json.loads(peak_file.read_text()) if peak_file.exists() else {}
    if done.returncode != 0:
        tail = log_file.read_text()[-2000:]
        raise RuntimeError(f"{module} exited {done.returncode} after {seconds:.0f} s: {tail}")
    return {"wall_s": seconds, "peak_gpu_gb": peak.get("peak_gpu_gb"), "log": str(log_file)}


def summary_of(ctx: Context, name: str) -> dict[str, Any]:
    return json.loads((ctx.work / name / "summary.json").read_text())


def check_train(overrides: Sequence[str], ctx: Context) -> dict[str, Any]:
    """Compose a training config as the entry point does and run its checks on this CPU."""
    from mrpo.testing.configs import checked_train_config

    cpu = [o for o in overrides if not o.startswith(("hydra.", "trainer.devices"))]
    cfg = checked_train_config([*cpu, "trainer.accelerator=cpu"], ctx.work / "dry")
    return {"status": "planned", "checks": "passed", "strategy": str(cfg.trainer.get("strategy"))}


def check_eval(overrides: Sequence[str], ctx: Context) -> dict[str, Any]:
    from mrpo.config import EvalRunConfig, to_dataclass
    from mrpo.config.validation import check_eval_run_config
    from mrpo.evals.runner import load_eval_data
    from mrpo.testing.configs import compose_config

    cpu = [o for o in overrides if not o.startswith("hydra.")]
    cfg = to_dataclass(
        compose_config([*cpu, f"paths.output_dir={ctx.work / 'dry'}"], config_name="eval"),
        EvalRunConfig,
    )
    check_eval_run_config(cfg)
    load_eval_data(cfg.eval.tasks, data_dir=cfg.paths.data_dir)  # the mirror files are there
    return {"status": "planned", "checks": "passed", "tasks": list(cfg.eval.tasks)}


# --- stages ------------------------------------------------------------------------------


def environment(ctx: Context) -> dict[str, Any]:
    import torch
    import transformers

    from mrpo.models import packaged_gguf_path

    cuda = torch.cuda.is_available()
    return {
        "status": "ok",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "transformers": transformers.__version__,
        "packaged_model": str(packaged_gguf_path()),
        "data_dir": os.environ.get("MRPO_DATA_DIR"),
        "installed": {p: importlib.util.find_spec(p) is not None for p in OPTIONAL_PACKAGES},
    }


BENCH_ARMS = ("trl_precompute", "mrpo_cached", "mrpo_logits")


def bench_args() -> argparse.Namespace:
    """``bench_trl.py``'s settings on the packaged model, bf16 on the GPU, one round."""
    args = argparse.Namespace(
        model="packaged", layers=4, pairs=64, batch_size=4, max_length=256,
        gradient_checkpointing=False, device="cuda", precision="bf16",
    )  # fmt: skip
    args.passthrough = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("model", "layers", "pairs", "batch_size", "max_length", "device", "precision")
    ]
    return args


def train_vs_trl(ctx: Context) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH_DIR))
    import bench_trl

    args = bench_args()
    arms = [a for a in BENCH_ARMS if importlib.util.find_spec("trl") or not a.startswith("trl")]
    with tempfile.TemporaryDirectory(prefix="mrpo-device-check-", dir=ctx.work) as tmp:
        setup = {**bench_trl.prepare(args, Path(tmp)), "scratch": tmp}
        runs = {arm: bench_trl.spawn(arm, setup, args) for arm in arms}
    keys = ("tokens_per_s", "peak_gpu_gb", "peak_rss_gb", "loop_s", "steps", "tokens")
    figures = {arm: {k: r.get(k) for k in keys} for arm, r in runs.items()}
    result: dict[str, Any] = {"status": "ok", "settings": vars(args) | {"passthrough": None}}
    result["arms"] = figures
    if "trl_precompute" in figures:
        mrpo, trl = figures["mrpo_cached"], figures["trl_precompute"]
        result["mrpo_over_trl_speed"] = mrpo["tokens_per_s"] / trl["tokens_per_s"]
        result["mrpo_over_trl_peak_gpu"] = mrpo["peak_gpu_gb"] / trl["peak_gpu_gb"]
    else:
        result["trl"] = "not installed (pip install trl): mrpo arms only"
    ctx.results["bench_arms"] = figures
    return result


def plan_train_vs_trl(ctx: Context) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH_DIR))
    import bench_trl

    missing = [a for a in BENCH_ARMS if a not in bench_trl.ARMS + bench_trl.OPTION_ARMS]
    if missing:
        raise RuntimeError(f"bench_trl.py has no arm(s) {missing}")
    return {
        "status": "planned",
        "arms": list(BENCH_ARMS),
        "trl_installed": importlib.util.find_spec("trl") is not None,
        "settings": vars(bench_args()) | {"passthrough": None},
    }


def fused_head(ctx: Context) -> dict[str, Any]:
    arms = ctx.results.get("bench_arms")
    if not arms:
        return {"status": "skipped", "reason": "train_vs_trl did not run"}
    fused, logits = arms["mrpo_cached"], arms["mrpo_logits"]
    return {
        "status": "ok",
        "fused_tokens_per_s": fused["tokens_per_s"],
        "logits_tokens_per_s": logits["tokens_per_s"],
        "speed_ratio": fused["tokens_per_s"] / logits["tokens_per_s"],
        "fused_peak_gpu_gb": fused["peak_gpu_gb"],
        "logits_peak_gpu_gb": logits["peak_gpu_gb"],
        "memory_ratio": fused["peak_gpu_gb"] / logits["peak_gpu_gb"],
    }


FSDP = ["trainer=fsdp", "trainer.devices=1", "callbacks.checkpoint.every_n_train_steps=5"]
QLORA = ["model=qlora", "trainer=gpu", "optimizer.fused=false"]


def training_stage(name: str, extra: Sequence[str]) -> tuple[Callable, Callable]:
    def run(ctx: Context) -> dict[str, Any]:
        figures = run_module(ctx, name, "mrpo.cli.train", train_overrides(name, extra, ctx))
        summary = summary_of(ctx, name)
        last = ctx.work / name / "checkpoints" / "last.ckpt"
        return {
            "status": "ok",
            **figures,
            "steps": summary["global_step"],
            "train_seconds": summary["seconds"],
            "final_val_loss": summary.get("final/val/loss"),
            "checkpoint_files": sorted(p.name for p in last.iterdir()) if last.is_dir() else None,
        }

    def plan(ctx: Context) -> dict[str, Any]:
        return check_train(train_overrides(name, extra, ctx), ctx)

    return run, plan


EVALS = {
    "eval_gsm8k_50": ["eval.tasks=[gsm8k]", "eval.limit=50", "eval.batch_size=32"],
    "eval_truthfulqa_all": ["eval.tasks=[truthfulqa]", "eval.limit=null", "eval.batch_size=32"],
}


def eval_stage(name: str) -> tuple[Callable, Callable]:
    def overrides(ctx: Context) -> list[str]:
        return [
            f"model.source={PACKAGED}", *EVALS[name], "logger=none",
            f"paths.cache_dir={ctx.work / 'cache'}", f"hydra.run.dir={ctx.work / name}",
        ]  # fmt: skip

    def run(ctx: Context) -> dict[str, Any]:
        figures = run_module(ctx, name, "mrpo.cli.evaluate", overrides(ctx))
        results = json.loads((ctx.work / name / "eval_results.json").read_text())
        metrics = results["metrics"]
        return {
            "status": "ok",
            **figures,
            "scoring_s": results["seconds"] - results["setup_seconds"],
            "metrics": {k: v for k, v in metrics.items() if not k.endswith("/seconds")},
        }

    def plan(ctx: Context) -> dict[str, Any]:
        return check_eval(overrides(ctx), ctx)

    return run, plan


CACHE = ["stage=cache", "references=prompted", "references.num_refs=2", "data.max_samples=256"]


def reference_cache(ctx: Context) -> dict[str, Any]:
    name = "reference_cache"
    args = train_overrides(name, CACHE, ctx)
    args = [a for a in args if not a.startswith("paths.cache_dir=")]
    args.append(f"paths.cache_dir={ctx.work / 'fresh_cache'}")  # nothing cached yet
    figures = run_module(ctx, name, "mrpo.cli.train", args)
    summary = summary_of(ctx, name)
    rows = len(cache_rows()) * summary["misses"]  # every row of every missing reference
    return {
        "status": "ok",
        **figures,
        "references_scored": summary["misses"],
        "forward_passes": summary["forward_passes"],
        "scoring_s": summary["seconds"],
        "rows_per_s": rows / summary["seconds"],
    }


def cache_rows() -> list[Any]:
    """The rows the cache stage scores (the mirror's first 256 HH-RLHF rows, valid ones)."""
    from mrpo.data.preference import load_preference_data

    return load_preference_data(
        "Anthropic/hh-rlhf", subset="harmless-base", split="test", drop_invalid=True, limit=256
    ).examples


def plan_reference_cache(ctx: Context) -> dict[str, Any]:
    planned = check_train(train_overrides("reference_cache", CACHE, ctx), ctx)
    return {**planned, "rows": len(cache_rows())}


def stages() -> list[Stage]:
    fsdp_run, fsdp_plan = training_stage("fsdp_1gpu", FSDP)
    qlora_run, qlora_plan = training_stage("qlora_4bit", QLORA)
    gsm_run, gsm_plan = eval_stage("eval_gsm8k_50")
    tqa_run, tqa_plan = eval_stage("eval_truthfulqa_all")
    return [
        Stage("environment", 30, environment, environment),
        Stage("train_vs_trl", 200, train_vs_trl, plan_train_vs_trl),
        Stage("fused_head", 1, fused_head, lambda ctx: {"status": "planned"}),
        Stage("fsdp_1gpu", 60, fsdp_run, fsdp_plan),
        Stage("qlora_4bit", 60, qlora_run, qlora_plan),
        Stage("eval_gsm8k_50", 90, gsm_run, gsm_plan),
        Stage("eval_truthfulqa_all", 90, tqa_run, tqa_plan),
        Stage("reference_cache", 45, reference_cache, plan_reference_cache),
    ]


def run_stages(ctx: Context) -> dict[str, Any]:
    """Every stage's figures (or its error, or why it was skipped), in order."""
    out: dict[str, Any] = {}
    for stage in stages():
        start = time.perf_counter()
        if not ctx.dry_run and ctx.remaining() < stage.budget_s * 0.5:
            out[stage.name] = {"status": "skipped", "reason": "the time budget ran out"}
            continue
        try:
            out[stage.name] = (stage.plan if ctx.dry_run else stage.run)(ctx)
        except Exception as err:  # a failed stage is a figure too; the others still run
            out[stage.name] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
        out[stage.name]["stage_s"] = time.perf_counter() - start
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="check the plumbing on a CPU")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S)
    parser.add_argument("--work-dir", type=Path, help="where the stages write (default: temp)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mrpo-device-check-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # Every stage (and bench_trl.py's arms) shares one conversion of the packaged model.
        os.environ.setdefault("MRPO_CACHE_DIR", str(work / "cache"))
        ctx = Context(dry_run=args.dry_run, work=work, deadline=started + args.budget_s)
        report = {"dry_run": args.dry_run, "budget_s": args.budget_s, **run_stages(ctx)}
    report["total_s"] = time.monotonic() - started
    failed = [k for k, v in report.items() if isinstance(v, dict) and v["status"] == "error"]
    report["failed_stages"] = failed
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
