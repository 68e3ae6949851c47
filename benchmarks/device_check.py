"""The device check: mrpo's large-scale path on one GPU, one JSON of figures per command.

Run by ``benchmarks/device_step.py`` (one command of the device plan: it installs the kit and
picks the stages, benchmarks/README.md) or ``benchmarks/device_check.sh``. Offline: the kit's
wheels, model files and data rows (``$MRPO_DATA_DIR``) only; nothing is downloaded. Stages,
each a child process or a few, within one time budget (``--budget-s``: later stages are
skipped, not cut, when it runs out); ``--stages`` picks some, in this order:

- ``environment``: GPU, torch/CUDA, the kit's packages, the packaged model if installed yet;
- ``train_135m``, ``train_0.5b``, ``train_1b``, ``packing``, ``fused_head`` (random weights,
  real architectures: ``device_stages.py``): mrpo against TRL's two fastest settings, packed
  rows, fused LM head;
- ``fsdp2_1gpu``: ``mrpo-train trainer=fsdp trainer.devices=1`` on the 135M shape (random);
- ``qlora_7b``: ``mrpo-train model=qlora`` on the 7B shape (random): peak memory;
- ``eval_gsm8k_50`` and ``eval_truthfulqa_all``: ``mrpo-eval`` wall time with the real
  packaged weights, GSM8K on 50 questions, TruthfulQA MC on all 817;
- ``reference_cache``: ``stage=cache`` into an empty cache with the real weights: reference
  rows scored per second;
- ``kstudy``: the first K-study (``device_kstudy.py``), if a command is left for it.

Each stage's JSON says which weights it used (``"weights": "random"`` or ``"real"``).
``--dry-run`` checks the plumbing on a CPU in seconds: every stage's command is built, every
training and evaluation config is composed and passes mrpo's config checks (on the CPU), the
packaged model and the mirror files are found, and the JSON has every stage, marked
``planned``; nothing is trained or scored. ``--smoke`` runs every stage for real at CPU size
(one narrow layer per architecture, a few steps, a few questions): the rehearsal's proof that
each stage's code runs from the kit.
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
sys.path.insert(0, str(BENCH_DIR))
BUDGET_S = 540.0  # 9 minutes
KIT_PACKAGES = ("hydra", "gguf", "datasets", "evaluate", "trl", "liger_kernel", "bitsandbytes")
PACKAGED = "packaged:smollm2-135m-instruct"


def small_run(source: str, smoke: bool) -> list[str]:
    """A short run on HH-RLHF harmless-base from the mirror: 64 rows, 8 validation, 10 steps
    (smoke: 16 rows, 4 validation, 2 steps)."""
    rows, val, steps, length = (16, 4, 2, 128) if smoke else (64, 8, 10, 256)
    return [
        f"model.source={source}", "data=hh_harmless", f"data.max_samples={rows}",
        f"data.val_size={val}", f"data.max_length={length}", "data.max_prompt_length=96",
        "data.batch_size=4", f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
        "eval=none", "logger=none", "save_model=false",
    ]  # fmt: skip


@dataclass
class Context:
    """Where and how the stages run."""

    dry_run: bool
    work: Path
    deadline: float
    smoke: bool = False
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


def train_overrides(name: str, extra: Sequence[str], ctx: Context, source: str) -> list[str]:
    run_dir = ctx.work / name
    return [
        *small_run(source, ctx.smoke), *extra,
        f"paths.cache_dir={ctx.work / 'cache'}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


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
    return {"status": "planned", "checks": "passed", "strategy": str(cfg.trainer.strategy)}


def check_eval(overrides: Sequence[str], ctx: Context) -> dict[str, Any]:
    from mrpo.config import EvalRunConfig, to_dataclass
    from mrpo.evals.runner import load_eval_data
    from mrpo.groups.checks import check_eval_run_config
    from mrpo.testing.configs import compose_config

    cpu = [o for o in overrides if not o.startswith("hydra.")]
    cfg = to_dataclass(
        compose_config([*cpu, f"paths.output_dir={ctx.work / 'dry'}"], config_name="eval"),
        EvalRunConfig,
    )
    check_eval_run_config(cfg)
    load_eval_data(cfg.eval.tasks, data_dir=cfg.paths.data_dir)  # the mirror files are there
    return {"status": "planned", "checks": "passed", "tasks": list(cfg.eval.tasks)}


def real_weights() -> dict[str, Any]:
    """What the JSON records about the packaged model's real weights."""
    from mrpo.models import model_fingerprint

    return {"weights": "real", "source": PACKAGED, "fingerprint": model_fingerprint(PACKAGED)}


# --- stages ------------------------------------------------------------------------------


def environment(ctx: Context) -> dict[str, Any]:
    import torch
    import transformers

    from mrpo.models import packaged_gguf_path
    from mrpo.models.sources import ModelSourceError

    cuda = torch.cuda.is_available()
    try:
        packaged: str | None = str(packaged_gguf_path())
    except ModelSourceError:  # installed by command 3 of the plan (its weights travel in two)
        packaged = None
    return {
        "status": "ok",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "packaged_model": packaged,
        "data_dir": os.environ.get("MRPO_DATA_DIR"),
        "installed": {p: importlib.util.find_spec(p) is not None for p in KIT_PACKAGES},
    }


FSDP = ["trainer=fsdp", "trainer.devices=1", "callbacks.checkpoint.every_n_train_steps=5"]
QLORA = ["model=qlora", "trainer=gpu", "optimizer.fused=false"]
ON_CPU = {"trainer=gpu": "trainer.accelerator=cpu"}  # smoke: the same stage on the CPU


def training_stage(name: str, extra: Sequence[str], arch: str) -> tuple[Callable, Callable]:
    """``mrpo-train`` with ``extra`` on architecture ``arch`` with random weights."""
    from device_stages import model_dir

    def overrides(ctx: Context) -> list[str]:
        source, _ = model_dir(ctx, arch)
        more = [ON_CPU.get(o, o) for o in extra] if ctx.smoke else list(extra)
        if ctx.smoke and "trainer.accelerator=cpu" not in more:
            more.append("trainer.accelerator=cpu")
        return train_overrides(name, more, ctx, str(source))

    def run(ctx: Context) -> dict[str, Any]:
        args = overrides(ctx)
        figures = run_module(ctx, name, "mrpo.cli.train", args)
        summary = summary_of(ctx, name)
        last = ctx.work / name / "checkpoints" / "last.ckpt"
        return {
            "status": "ok",
            **model_dir(ctx, arch)[1],
            **figures,
            "steps": summary["global_step"],
            "train_seconds": summary["seconds"],
            "final_val_loss": summary.get("final/val/loss"),
            "checkpoint_files": sorted(p.name for p in last.iterdir()) if last.is_dir() else None,
        }

    def plan(ctx: Context) -> dict[str, Any]:
        return {**check_train(overrides(ctx), ctx), "weights": "random", "architecture": arch}

    return run, plan


EVALS = {
    "eval_gsm8k_50": ["eval.tasks=[gsm8k]", "eval.limit=50", "eval.batch_size=32"],
    "eval_truthfulqa_all": ["eval.tasks=[truthfulqa]", "eval.limit=null", "eval.batch_size=32"],
}
SMOKE_EVALS = {
    "eval_gsm8k_50": ["eval.tasks=[gsm8k]", "eval.limit=1", "eval.max_new_tokens=16"],
    "eval_truthfulqa_all": ["eval.tasks=[truthfulqa]", "eval.limit=4"],
}


def eval_stage(name: str) -> tuple[Callable, Callable]:
    def overrides(ctx: Context) -> list[str]:
        sizes = SMOKE_EVALS if ctx.smoke else EVALS
        return [
            f"model.source={PACKAGED}", *sizes[name], "logger=none",
            f"paths.cache_dir={ctx.work / 'cache'}", f"hydra.run.dir={ctx.work / name}",
        ]  # fmt: skip

    def run(ctx: Context) -> dict[str, Any]:
        figures = run_module(ctx, name, "mrpo.cli.evaluate", overrides(ctx))
        results = json.loads((ctx.work / name / "eval_results.json").read_text())
        metrics = results["metrics"]
        return {
            "status": "ok",
            **real_weights(),
            **figures,
            "scoring_s": results["seconds"] - results["setup_seconds"],
            "metrics": {k: v for k, v in metrics.items() if not k.endswith("/seconds")},
        }

    def plan(ctx: Context) -> dict[str, Any]:
        return check_eval(overrides(ctx), ctx)

    return run, plan


def cache_args(ctx: Context) -> list[str]:
    rows = 16 if ctx.smoke else 256
    extra = ["stage=cache", "references=prompted", "references.num_refs=2"]
    args = train_overrides("reference_cache", extra, ctx, PACKAGED)
    args = [a for a in args if not a.startswith(("paths.cache_dir=", "data.max_samples="))]
    if ctx.smoke:
        args.append("trainer.accelerator=cpu")
    return [*args, f"data.max_samples={rows}", f"paths.cache_dir={ctx.work / 'fresh_cache'}"]


def reference_cache(ctx: Context) -> dict[str, Any]:
    name = "reference_cache"
    figures = run_module(ctx, name, "mrpo.cli.train", cache_args(ctx))
    summary = summary_of(ctx, name)
    rows = len(cache_rows(16 if ctx.smoke else 256)) * summary["misses"]  # every missing ref
    return {
        "status": "ok",
        **real_weights(),
        **figures,
        "references_scored": summary["misses"],
        "forward_passes": summary["forward_passes"],
        "scoring_s": summary["seconds"],
        "rows_per_s": rows / summary["seconds"],
    }


def cache_rows(limit: int = 256) -> list[Any]:
    """The rows the cache stage scores (the mirror's first ``limit`` HH-RLHF rows, valid ones)."""
    from mrpo.data.preference import load_preference_data

    return load_preference_data(
        "Anthropic/hh-rlhf", subset="harmless-base", split="test", drop_invalid=True, limit=limit
    ).examples


def plan_reference_cache(ctx: Context) -> dict[str, Any]:
    planned = check_train(cache_args(ctx), ctx)
    return {**planned, "rows": len(cache_rows())}


def stages() -> list[Stage]:
    import device_kstudy
    import device_stages as ds

    def planned(ctx: Context) -> dict[str, Any]:
        return {"status": "planned"}

    train = {name: ds.train_stage(name) for name in ds.SHAPES}
    fsdp_run, fsdp_plan = training_stage("fsdp2_1gpu", FSDP, "smollm2-135m")
    qlora_run, qlora_plan = training_stage("qlora_7b", QLORA, "qwen2.5-7b")
    gsm_run, gsm_plan = eval_stage("eval_gsm8k_50")
    tqa_run, tqa_plan = eval_stage("eval_truthfulqa_all")
    return [
        Stage("environment", 20, environment, environment),
        Stage("train_135m", 100, *train["train_135m"]),
        Stage("packing", 1, ds.packing, planned),
        Stage("fsdp2_1gpu", 50, fsdp_run, fsdp_plan),
        Stage("train_0.5b", 80, *train["train_0.5b"]),
        Stage("train_1b", 80, *train["train_1b"]),
        Stage("fused_head", 1, ds.fused_head, planned),
        Stage("qlora_7b", 100, qlora_run, qlora_plan),
        Stage("eval_gsm8k_50", 60, gsm_run, gsm_plan),
        Stage("eval_truthfulqa_all", 60, tqa_run, tqa_plan),
        Stage("reference_cache", 40, reference_cache, plan_reference_cache),
        Stage("kstudy", 300, device_kstudy.run, device_kstudy.plan),
    ]


def run_stages(ctx: Context, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Every stage's figures (or its error, or why it was skipped), in order; ``only``: the
    stages to run (all by default)."""
    out: dict[str, Any] = {}
    for stage in stages():
        if only is not None and stage.name not in only:
            continue
        start = time.perf_counter()
        if not ctx.dry_run and ctx.remaining() < stage.budget_s * 0.5:
            out[stage.name] = {"status": "skipped", "reason": "the time budget ran out"}
            continue
        try:
            out[stage.name] = (stage.plan if ctx.dry_run else stage.run)(ctx)
        except (Exception, SystemExit) as err:  # a failed stage is a figure too
            out[stage.name] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
        out[stage.name]["stage_s"] = time.perf_counter() - start
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="check the plumbing on a CPU")
    parser.add_argument("--smoke", action="store_true", help="every stage at CPU size")
    parser.add_argument("--stages", help="comma-separated stage names (default: all)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S)
    parser.add_argument("--work-dir", type=Path, help="where the stages write (default: temp)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    known = [s.name for s in stages()]
    only = args.stages.split(",") if args.stages else None
    if only and (unknown := sorted(set(only) - set(known))):
        parser.error(f"--stages: unknown {unknown}; known: {known}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mrpo-device-check-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        # Every stage (and bench_trl.py's arms) shares one conversion of the packaged model.
        os.environ.setdefault("MRPO_CACHE_DIR", str(work / "cache"))
        ctx = Context(args.dry_run, work, started + args.budget_s, smoke=args.smoke)
        report = {"dry_run": args.dry_run, "smoke": args.smoke, "budget_s": args.budget_s}
        report |= run_stages(ctx, only)
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
