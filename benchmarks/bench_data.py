"""Data preparation at scale: seconds and peak memory to load, validate, split and tokenize.

Synthesizes N preference pairs from the mirror's HH-RLHF harmless-base rows (2,312 test rows,
each copy varied: a copy number written into its first human turn and at the end of both
responses, so that every row, prompt and response is distinct), writes them as a JSON Lines
file, and runs ``mrpo-train``'s data step on it (:func:`mrpo.data.pipeline.prepare_data`: load,
validate, split, tokenize with the packaged SmolLM2 tokenizer, fingerprint) in a fresh process
per size, so that each peak memory is its own. Reported per size: seconds, the peak resident
memory above the process's baseline (the interpreter with torch, transformers and mrpo
imported, the tokenizer loaded), per pair; then the same size again with the same cache
directory (a second run reads the prepared table).

Goals (printed, never asserted): time and memory growing linearly with N; 100,000 pairs in at
most 120 s and 1.5 GB above the baseline on 2 CPU cores.

``--stage-cache N`` runs ``mrpo-train stage=cache`` instead (data preparation, then the
reference log-prob cache of the ``self`` reference) on N synthesized pairs with a tiny random
Llama that uses the packaged tokenizer, and prints its seconds and peak memory (goal: 30,000
pairs within 24 GB).

Usage::

    python benchmarks/bench_data.py                           # 10k, 30k and 100k pairs
    python benchmarks/bench_data.py --num-proc 2              # data.num_proc=2
    python benchmarks/bench_data.py --sizes 2000,6000         # a quick check
    python benchmarks/bench_data.py --stage-cache 30000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def synthesize(path: Path, num_pairs: int) -> Path:
    """Write ``num_pairs`` distinct HH-style rows varied from the mirror's harmless-base test."""
    mirror = Path(os.environ.get("MRPO_DATA_DIR", "../shared/data"))
    with gzip.open(mirror / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt") as f:
        base = [json.loads(line) for line in f if line.strip()]
    with path.open("w") as out:
        for i in range(num_pairs):
            row, copy = base[i % len(base)], i // len(base)
            varied = {}
            for key in ("chosen", "rejected"):
                # The first human turn and the end of each response carry the copy number.
                text = row[key].replace("Human: ", f"Human: ({copy}) ", 1)
                varied[key] = f"{text} ({copy})"
            out.write(json.dumps(varied) + "\n")
    return path


def reset_peak() -> bool:
    """Restart the kernel's count of this process's peak memory (Linux), so that the peak of
    what follows is measured, not that of the imports before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_gb() -> float:
    """This process's peak resident memory (since :func:`reset_peak`), in GB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_gb() -> float:
    """This process's resident memory now, in GB."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return peak_gb()


def run_size(args: argparse.Namespace) -> dict[str, Any]:
    """One preparation in this process: seconds and peak RSS above the baseline."""
    from mrpo.cli.train import prepare_data
    from mrpo.config import TrainConfig, to_dataclass
    from mrpo.data.prepare import resolve_num_proc
    from mrpo.models import PACKAGED_MODEL, load_tokenizer
    from mrpo.models.policy import model_cache_dir
    from mrpo.testing.configs import compose_config

    cfg = to_dataclass(
        compose_config(
            [
                "data=local_file",
                f"data.source={args.file}",
                f"model.source={PACKAGED_MODEL}",
                "data.val_size=0.05",
                *([f"data.num_proc={args.num_proc}"] if args.num_proc else []),
                f"paths.cache_dir={args.cache_dir}",
                f"paths.output_dir={args.cache_dir}/run",
                "logger=none",
            ]
        ),
        TrainConfig,
    )
    # The tokenizer is part of the baseline: every run loads it, whatever the data size.
    load_tokenizer(PACKAGED_MODEL, cache_dir=model_cache_dir(cfg.paths.cache_dir))
    baseline = current_gb()
    reset_peak()
    start = time.perf_counter()
    data = prepare_data(cfg)
    seconds = time.perf_counter() - start
    # Worker processes (data.num_proc) are forks of this one: each starts with the baseline's
    # pages (shared) and adds its own. Their count and the largest one's peak above the
    # baseline give the total above the baseline, at most: the parent's plus the workers'.
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    worker_extra = max(worker_peak - baseline, 0.0) if worker_peak else 0.0
    workers = resolve_num_proc(cfg.data.num_proc, len(data.train_examples))
    parent_extra = peak_gb() - baseline
    return {
        "seconds": seconds,
        "parent_gb": parent_extra,
        "worker_gb": worker_extra,
        "workers": workers if worker_peak else 0,
        "extra_gb": parent_extra + (workers if worker_peak else 0) * worker_extra,
        "baseline_gb": baseline,
        "pairs": data.report["train_pairs"] + data.report["val_pairs"],
        "truncated": data.report["truncated"],
    }


def spawn(file: Path, cache_dir: Path, num_proc: int | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--run", str(file), "--cache-dir", str(cache_dir)]
    cmd += ["--num-proc", str(num_proc)] if num_proc else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{file.name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stage_cache(num_pairs: int, models: Path) -> None:
    """``mrpo-train stage=cache`` on ``num_pairs`` synthesized pairs, a tiny model: time, peak."""
    from mrpo.models import PACKAGED_MODEL, load_tokenizer
    from mrpo.testing.models import make_tiny_model, save_tiny_model

    with tempfile.TemporaryDirectory(prefix="mrpo-bench-cache-") as tmp:
        root = Path(tmp)
        tokenizer = load_tokenizer(PACKAGED_MODEL, cache_dir=models)
        tiny = make_tiny_model(
            len(tokenizer),
            hidden_size=64,
            num_layers=2,
            max_position_embeddings=2048,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        source = save_tiny_model(root / "tiny", tiny, tokenizer)
        file = synthesize(root / "pairs.jsonl", num_pairs)
        cmd = [
            sys.executable,
            "-m",
            "mrpo.cli.train",
            "stage=cache",
            f"model.source={source}",
            "references=self",
            "data=local_file",
            f"data.source={file}",
            "data.val_size=0.05",
            "logger=none",
            f"paths.cache_dir={root / 'cache'}",
            f"hydra.run.dir={root / 'run'}",
        ]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"stage=cache failed:\n{done.stderr[-4000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        summary = json.loads((root / "run" / "summary.json").read_text())
    print(
        f"stage=cache, {num_pairs} pairs, tiny model with the packaged tokenizer: {seconds:.1f} s, "
        f"peak resident memory {peak:.2f} GB (goal for 30,000 pairs: within 24 GB); "
        f"{summary.get('forward_passes')} reference forward passes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--num-proc", type=int, default=None, help="data.num_proc (default: auto)")
    parser.add_argument(
        "--model-cache",
        default=os.path.join(os.environ.get("MRPO_CACHE_DIR", "~/.cache/mrpo"), "models"),
        help="folder of converted models (the packaged GGUF model's conversion is reused)",
    )
    parser.add_argument("--stage-cache", type=int, help="run mrpo-train stage=cache on N pairs")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: one preparation
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        args.file = args.run
        print(json.dumps(run_size(args)))
        return
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    models = Path(args.model_cache).expanduser()
    models.mkdir(parents=True, exist_ok=True)
    if args.stage_cache:
        stage_cache(args.stage_cache, models)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'pairs':>8}{'run':>8}{'seconds':>10}{'extra GB':>10}{'ms/pair':>9}{'KB/pair':>9}"
        "   (extra = this process's peak above its baseline + each worker's)"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="mrpo-bench-data-") as tmp:
        for n in sizes:
            file = synthesize(Path(tmp) / f"pairs_{n}.jsonl", n)
            cache = Path(tmp) / f"cache_{n}"
            # The converted packaged model is shared (it is not data preparation).
            cache.mkdir()
            (cache / "models").symlink_to(models, target_is_directory=True)
            for run in ("first", "second"):
                r = spawn(file, cache, args.num_proc)
                rows.append((n, run, r))
                print(
                    f"{n:>8}{run:>8}{r['seconds']:>10.1f}{r['extra_gb']:>10.2f}"
                    f"{1000 * r['seconds'] / n:>9.2f}{2**20 * r['extra_gb'] / n:>9.1f}"
                    f"   (baseline {r['baseline_gb']:.2f} GB; main {r['parent_gb']:.2f} GB + "
                    f"{r['workers']} workers x {r['worker_gb']:.2f} GB; {r['truncated']} "
                    "truncated)",
                    flush=True,
                )
    first = {n: r for n, run, r in rows if run == "first"}
    smallest = min(first)
    for n in sorted(first)[1:]:
        print(
            f"{n} / {smallest}: {n / smallest:.1f}x the pairs, "
            f"{first[n]['seconds'] / first[smallest]['seconds']:.2f}x the time, "
            f"{first[n]['extra_gb'] / max(first[smallest]['extra_gb'], 1e-9):.2f}x the memory"
        )
    if 100_000 in first:
        r = first[100_000]
        print(
            f"100k pairs: {r['seconds']:.1f} s (goal <= 120), {r['extra_gb']:.2f} GB above the "
            "baseline (goal <= 1.5)"
        )


if __name__ == "__main__":
    main()
