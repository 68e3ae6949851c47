"""The device check's speed and memory stages, on real architectures with random weights.

- ``train_135m``, ``train_0.5b``, ``train_1b``: bf16 training tokens/s and peak GPU memory of
  mrpo (cached reference, fused LM head) against TRL's ``DPOTrainer`` in its two fastest
  settings (``trl_precompute``; ``trl_liger``: the same with ``use_liger_kernel``), on
  SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B shapes (``bench_trl.py``'s arms, each its own
  process); mrpo's logits path beside it, and at 135M its packed rows under FlexAttention;
- ``packing``: packed rows with FlexAttention (``mrpo_packflex``) against padded rows;
- ``fused_head``: the fused LM head against the logits path, at every shape that ran;
- ``fsdp2_1gpu``: ``mrpo-train trainer=fsdp trainer.devices=1`` (FSDP2) on the 135M shape;
- ``qlora_7b``: ``mrpo-train model=qlora`` (4-bit NF4 + LoRA) on the 7B shape: peak memory.

Every stage's JSON says ``"weights": "random"`` with the architecture and its parameter count.
With ``--smoke`` (the CPU rehearsal) every architecture is one narrow layer, the runs are a few
steps in float32 on the CPU, and the GPU-only arms (Liger's Triton kernels, FlexAttention)
give way to their CPU counterparts (``trl_liger`` is then only imported; ``mrpo_pack`` packs
under SDPA's dense mask), which the JSON says.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_models import architecture, parameter_count, write_random_model

BENCH_DIR = Path(__file__).resolve().parent
SHAPES = {"train_135m": "smollm2-135m", "train_0.5b": "qwen2.5-0.5b", "train_1b": "llama-3.2-1b"}
GPU_ARMS = ("trl_precompute", "trl_liger", "mrpo_cached", "mrpo_logits")
SMOKE_ARMS = ("trl_precompute", "mrpo_cached", "mrpo_logits")
PACK_ARM = {False: "mrpo_packflex", True: "mrpo_pack"}  # by ctx.smoke
FIGURES = ("tokens_per_s", "peak_gpu_gb", "peak_rss_gb", "loop_s", "steps", "tokens", "padding")


def bench_args(model: str, smoke: bool) -> argparse.Namespace:
    """``bench_trl.py``'s settings: bf16 on the GPU; float32, 4 pairs on the CPU (smoke)."""
    args = argparse.Namespace(
        model=model, layers=4, pairs=4 if smoke else 48, batch_size=2 if smoke else 4,
        max_length=128 if smoke else 256, gradient_checkpointing=False,
        device="cpu" if smoke else "cuda", precision="fp32" if smoke else "bf16",
    )  # fmt: skip
    args.passthrough = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("model", "layers", "pairs", "batch_size", "max_length", "device", "precision")
    ]
    return args


def model_dir(ctx: Any, arch: str) -> tuple[Path, dict[str, Any]]:
    """The random-weight model of ``arch`` in this command's work dir (written once; a dry
    run's configs are checked against the one-layer shape, which writes in a second)."""
    directory = ctx.work / "models" / arch
    info_key = f"model:{arch}"
    if info_key not in ctx.results:
        small = ctx.smoke or ctx.dry_run
        model = write_random_model(arch, directory, smoke=small, tiny_tokenizer=ctx.dry_run)
        ctx.results[info_key] = model
    return directory, ctx.results[info_key]


def arms_for(name: str, smoke: bool) -> list[str]:
    """The arms of a ``train_*`` stage. The CPU smoke runs every arm's code at 135M and only
    TRL's and mrpo's main arms at the larger shapes: what those add is their model classes."""
    if smoke and name != "train_135m":
        return ["trl_precompute", "mrpo_cached"]
    arms = list(SMOKE_ARMS if smoke else GPU_ARMS)
    if name == "train_135m":
        arms.append(PACK_ARM[smoke])
    return arms


def spawn_arms(arms: list[str], source: Path, ctx: Any) -> dict[str, dict[str, Any]]:
    """Each arm in its own process; a failed arm is reported, the others still run."""
    sys.path.insert(0, str(BENCH_DIR))
    import bench_trl

    args = bench_args(str(source), ctx.smoke)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-", dir=ctx.work) as tmp:
        setup = {**bench_trl.prepare(args, Path(tmp)), "scratch": tmp}
        for arm in arms:
            try:
                run = bench_trl.spawn(arm, setup, args)
                out[arm] = {"status": "ok", **{k: run.get(k) for k in FIGURES}}
            except (SystemExit, Exception) as err:  # spawn exits with the arm's stderr tail
                out[arm] = {"status": "error", "error": str(err)[-1500:]}
    return out


def ratio(arms: dict[str, Any], a: str, b: str, key: str) -> float | None:
    x, y = arms.get(a, {}), arms.get(b, {})
    if x.get("status") != "ok" or y.get("status") != "ok" or not x.get(key) or not y.get(key):
        return None
    return float(x[key]) / float(y[key])


def train_stage(name: str) -> tuple[Callable, Callable]:
    """The run and the dry-run plan of one ``train_<shape>`` stage."""
    arch = SHAPES[name]

    def run(ctx: Any) -> dict[str, Any]:
        source, weights = model_dir(ctx, arch)
        arms = spawn_arms(arms_for(name, ctx.smoke), source, ctx)
        ctx.results[name] = arms
        memory = "peak_rss_gb" if ctx.smoke else "peak_gpu_gb"
        result: dict[str, Any] = {"status": "ok", **weights, "arms": arms}
        for trl in ("trl_precompute", "trl_liger"):
            result[f"mrpo_over_{trl}_speed"] = ratio(arms, "mrpo_cached", trl, "tokens_per_s")
            result[f"mrpo_over_{trl}_memory"] = ratio(arms, "mrpo_cached", trl, memory)
        if ctx.smoke:
            result["trl_liger"] = liger_import_check()
        if any(a["status"] != "ok" for a in arms.values()):
            result["status"] = "error"
            result["error"] = f"arms failed: {[k for k, a in arms.items() if a['status'] != 'ok']}"
        return result

    def plan(ctx: Any) -> dict[str, Any]:
        sys.path.insert(0, str(BENCH_DIR))
        import bench_trl

        known = bench_trl.ARMS + bench_trl.OPTION_ARMS + bench_trl.GPU_ARMS
        arms = arms_for(name, smoke=False)
        if missing := [a for a in arms if a not in known]:
            raise RuntimeError(f"bench_trl.py has no arm(s) {missing}")
        spec = architecture(arch)
        return {
            "status": "planned", "weights": "random", "architecture": arch,
            "parameters": parameter_count(spec), "arms": arms,
            "settings": vars(bench_args(arch, False)) | {"passthrough": None},
        }  # fmt: skip

    return run, plan


def liger_import_check() -> dict[str, Any]:
    """On a CPU Liger's Triton kernels cannot run: check that the kit installed it."""
    found = importlib.util.find_spec("liger_kernel") is not None
    if found:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss  # noqa: F401
    return {"imported": found, "ran": False, "why": "Triton kernels need a GPU"}


def packing(ctx: Any) -> dict[str, Any]:
    arms = ctx.results.get("train_135m")
    pack = PACK_ARM[ctx.smoke]
    if not arms or arms.get(pack, {}).get("status") != "ok":
        return {"status": "skipped", "reason": f"train_135m's {pack} arm did not run"}
    memory = "peak_rss_gb" if ctx.smoke else "peak_gpu_gb"
    return {
        "status": "ok", "weights": "random", "architecture": SHAPES["train_135m"],
        "packed_arm": pack, "attention": "sdpa (CPU)" if ctx.smoke else "flex_attention",
        "packed": arms[pack], "padded": arms["mrpo_cached"],
        "speed_ratio": ratio(arms, pack, "mrpo_cached", "tokens_per_s"),
        "memory_ratio": ratio(arms, pack, "mrpo_cached", memory),
    }  # fmt: skip


def fused_head(ctx: Any) -> dict[str, Any]:
    memory = "peak_rss_gb" if ctx.smoke else "peak_gpu_gb"
    shapes = {}
    for name, arch in SHAPES.items():
        arms = ctx.results.get(name) or {}
        speed = ratio(arms, "mrpo_cached", "mrpo_logits", "tokens_per_s")
        if speed is not None:
            shapes[arch] = {
                "speed_ratio": speed,
                "memory_ratio": ratio(arms, "mrpo_cached", "mrpo_logits", memory),
                "fused_peak": arms["mrpo_cached"].get(memory),
                "logits_peak": arms["mrpo_logits"].get(memory),
            }
    if not shapes:
        return {"status": "skipped", "reason": "no train_* stage ran both arms"}
    return {"status": "ok", "weights": "random", "memory": memory, "shapes": shapes}
