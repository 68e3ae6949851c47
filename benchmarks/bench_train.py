"""Cost of a training step with K references, and of filling the reference cache, in one run.

Measures, on one model and one pool of HH-RLHF harmless-base pairs:

(a) the training step of MRPO with K=3 *cached* references (the batch carries the log-probs
    of a :class:`~mrpo.references.RefTable`) against DPO with K=1 cached, as a ratio;
(b) MRPO K=3 with *live* references (:class:`~mrpo.references.LiveReferences`: the policy's
    initial weights and two prompted variants, sharing one frozen copy of the weights, since a
    fully fine-tuned policy moves away from them) against MRPO K=3 cached, as a ratio;
(c) filling the cache for a sweep over K = 1, 2, 3, 4 of the prompted reference pool
    (``conf/references/prompted.yaml``): with one shared cache directory, where each distinct
    reference is scored once, against a fresh cache directory per K; forward passes, cache
    misses and hits, model loads and seconds each way.

A training step is ``PreferenceModule.training_step`` (the code path of a real run: policy
log-probs, reference log-probs, objective, metrics) + ``loss.backward()`` + AdamW ``step()`` +
``zero_grad()``, called directly (no Lightning Trainer, whose loop adds its own noise). Each
arm has its own policy and optimizer from the same initial weights and sees the same batches
(length-grouped, as in training; collation is data-loader work and is not timed). The arms run
interleaved (A, B, C, then B, C, A, ...) after warm-up steps, and each reports its median; the
ratios are given as ratio of medians and as median of the per-round ratios.

Default model: a random Llama of SmolLM2-135M's width (hidden 576, 9 heads, 3 key/value
heads, intermediate 1536, vocabulary 49152, tied embeddings) with 4 layers instead of 30 and
a tiny test tokenizer; ``--model packaged`` uses the packaged SmolLM2-135M-Instruct instead.
Data: ``$MRPO_DATA_DIR`` (HH-RLHF harmless-base test split), else synthetic HH-style pairs.

Usage::

    python benchmarks/bench_train.py                      # about 4 minutes on 2 CPU cores
    python benchmarks/bench_train.py --model packaged --steps 5 --max-length 256
    python benchmarks/bench_train.py --steps 2 --pool-size 8 --batch-size 2 --layers 1  # smoke
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import OmegaConf

from mrpo.config import CONFIG_DIR
from mrpo.data.collate import LengthGroupedBatchSampler, PreferenceCollator, pair_lengths
from mrpo.data.pipeline import DataConfig, pair_layout
from mrpo.data.preference import load_preference_data
from mrpo.data.tokenize import tokenize_pairs
from mrpo.data.types import PreferenceBatch, PreferenceExample
from mrpo.models import PACKAGED_MODEL, load_model, load_tokenizer
from mrpo.objectives import get_objective
from mrpo.references import LiveReferences, ReferenceEnsemble, ReferenceSpec, ReferenceStats
from mrpo.testing.runs import write_hh_pairs
from mrpo.testing.tokenizers import make_tiny_tokenizer
from mrpo.training.module import PreferenceModule

BETA = 0.1
LEARNING_RATE = 5e-6  # conf/optimizer/adamw.yaml
CACHE_KS = (1, 2, 3, 4)
LAYOUT = pair_layout(DataConfig())  # mrpo-train's default layout of a batch's pairs


@dataclass
class Arm:
    """One timed training setup: its module, optimizer and pre-collated batches."""

    name: str
    module: PreferenceModule
    optimizer: torch.optim.Optimizer
    batches: list[PreferenceBatch]


# --- setup ---------------------------------------------------------------------------------


def machine_info() -> str:
    """One line: CPUs, torch threads, load average, library versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, cpu_count {os.cpu_count()} "
        f"(usable {usable}), torch threads {torch.get_num_threads()}, load avg {load}; "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def write_random_model(directory: Path, num_layers: int) -> Path:
    """Save a random Llama of SmolLM2-135M's width with ``num_layers`` layers and a tiny tokenizer.

    The vocabulary stays 49152 wide (the tiny tokenizer uses its first 384 ids), so the output
    layer, the largest matrix of a small model, costs what it costs in SmolLM2.
    """
    tokenizer = make_tiny_tokenizer("chatml")
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=num_layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_pool(num_pairs: int, scratch: Path) -> tuple[list[PreferenceExample], str]:
    """``num_pairs`` preference pairs: HH-RLHF harmless-base from the mirror, else synthetic."""
    if os.environ.get("MRPO_DATA_DIR"):
        loaded = load_preference_data(
            "Anthropic/hh-rlhf",
            subset="harmless-base",
            split="test",
            drop_invalid=True,
            limit=2 * num_pairs,  # some rows may be dropped as invalid
        )
        return loaded.examples[:num_pairs], loaded.source
    path = write_hh_pairs(scratch / "hh_pairs.jsonl", num_pairs)
    return load_preference_data(str(path)).examples, f"{path} (synthetic; MRPO_DATA_DIR unset)"


def prompted_pool() -> list[ReferenceSpec]:
    """The K=4 prompted reference pool of ``conf/references/prompted.yaml``."""
    pool = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "references" / "prompted.yaml"))
    return [ReferenceSpec(**entry) for entry in pool["pool"]]


def make_ensemble(
    specs: list[ReferenceSpec], source: str, cache_dir: Path, args: argparse.Namespace
) -> ReferenceEnsemble:
    return ReferenceEnsemble(
        specs,
        policy_source=source,
        max_length=args.max_length,
        max_prompt_length=args.max_length // 2,
        cache_dir=cache_dir,
        batch_size=args.ref_batch_size,
        device="cpu",
        layout=LAYOUT,
    )


# --- (c) cache fill ------------------------------------------------------------------------


def bench_cache_fill(
    pool: list[PreferenceExample], source: str, scratch: Path, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], Path]:
    """Precompute each K of ``CACHE_KS`` with a shared cache and with a fresh one per K.

    Returns one row per (K, mode) with the :class:`ReferenceStats` of that ``precompute``
    call, and the shared cache directory (it then holds every reference of the pool).
    """
    specs = prompted_pool()
    shared = scratch / "cache-shared"
    rows = []
    for i, k in enumerate(CACHE_KS):
        modes = ["shared", "fresh"] if i % 2 == 0 else ["fresh", "shared"]  # spread drift
        for mode in modes:
            cache_dir = shared if mode == "shared" else scratch / f"cache-fresh-k{k}"
            ensemble = make_ensemble(specs[:k], source, cache_dir, args)
            stats = ensemble.precompute(pool, progress=False).stats
            rows.append({"k": k, "mode": mode, **asdict(stats)})
    return rows, shared


# --- (a), (b) training steps ---------------------------------------------------------------


def policy_and_optimizer(source: str) -> tuple[Any, torch.optim.Optimizer]:
    policy = load_model(source, trainable=True)
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    return policy, torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)


def build_arms(
    pool: list[PreferenceExample], source: str, cache_dir: Path, args: argparse.Namespace
) -> tuple[list[Arm], dict[str, Any]]:
    """DPO K=1 cached, MRPO K=3 cached and MRPO K=3 live, on the same batches."""
    tokenizer = load_tokenizer(source)
    pairs = tokenize_pairs(
        pool, tokenizer, max_length=args.max_length, max_prompt_length=args.max_length // 2
    ).pairs
    sampler = LengthGroupedBatchSampler(pair_lengths(pairs), args.batch_size, seed=0)
    groups = [[pairs[i] for i in rows] for rows in sampler]
    specs = prompted_pool()[:3]
    table3 = make_ensemble(specs, source, cache_dir, args).table(pool, progress=False)
    table1 = make_ensemble(specs[:1], source, cache_dir, args).table(pool, progress=False)
    live_ensemble = make_ensemble(specs, source, cache_dir, args)
    setups = [
        ("DPO K=1 cached", "dpo", 1, table1, False),
        ("MRPO K=3 cached", "mrpo", 3, table3, False),
        ("MRPO K=3 live", "mrpo", 3, None, True),
    ]
    arms = []
    for name, objective, k, table, live in setups:
        policy, optimizer = policy_and_optimizer(source)
        refs = LiveReferences(live_ensemble, policy=policy, examples=pool) if live else None
        module = PreferenceModule(
            policy,
            tokenizer,
            get_objective(objective, beta=BETA, num_refs=k),
            torch.optim.AdamW,
            live_references=refs,
        )
        collate = PreferenceCollator(tokenizer.pad_token_id, ref_lookup=table, layout=LAYOUT)
        arms.append(Arm(name, module, optimizer, [collate(g) for g in groups]))
    widths = [b.input_ids.shape[1] for b in arms[0].batches]
    info = {
        "parameters": sum(p.numel() for p in arms[0].module.policy.parameters()),
        "batches": len(groups),
        "mean_width": statistics.mean(widths),
        "max_width": max(widths),
        "live_model_loads": live_ensemble.stats.model_loads,
    }
    return arms, info


def train_step(arm: Arm, batch_idx: int) -> float:
    """Seconds of one optimizer step of ``arm`` on its batch ``batch_idx`` (cycled)."""
    batch = arm.batches[batch_idx % len(arm.batches)]
    start = time.perf_counter()
    loss = arm.module.training_step(batch, batch_idx)
    if loss is None:
        raise RuntimeError(f"{arm.name}: non-finite loss at step {batch_idx}")
    loss.backward()
    arm.optimizer.step()
    arm.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def rotation(arms: Sequence[Any], i: int) -> list[Any]:
    """The arms in round ``i``'s order: rotated by ``i``, so that no arm always runs first or
    right after the same other arm (caches and allocator state carry over between runs)."""
    k = i % len(arms)
    return [*arms[k:], *arms[:k]]


def run_rounds(
    arms: Sequence[str],
    rounds: int,
    run_one: Callable[[str], dict[str, Any]],
    on_result: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run every arm once per round, in :func:`rotation` order; each arm's results in order.

    ``on_result(round, arm, result)`` is called after each run (e.g. to print progress).
    """
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for r in range(rounds):
        for arm in rotation(arms, r):
            results[arm].append(run_one(arm))
            if on_result is not None:
                on_result(r, arm, results[arm][-1])
    return results


def bench_steps(arms: list[Arm], steps: int, warmup: int) -> dict[str, list[float]]:
    """Interleaved rounds: every arm takes step i on batch i; warm-up rounds not recorded.

    The order of the arms rotates from round to round (:func:`rotation`).
    """
    times: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for i in range(warmup + steps):
        for arm in rotation(arms, i):
            seconds = train_step(arm, i)
            if i >= warmup:
                times[arm.name].append(seconds)
    return times


# --- report --------------------------------------------------------------------------------


def ratio_line(label: str, times: dict[str, list[float]], num: str, den: str) -> str:
    medians = statistics.median(times[num]) / statistics.median(times[den])
    paired = statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))
    return f"{label}: {medians:.3f} (ratio of medians), {paired:.3f} (median of per-round ratios)"


def print_steps(times: dict[str, list[float]]) -> None:
    base = statistics.median(times["DPO K=1 cached"])
    print(f"\n{'arm':<18}{'median s':>10}{'min s':>9}{'max s':>9}{'vs DPO':>9}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<18}{med:>10.3f}{min(values):>9.3f}{max(values):>9.3f}{med / base:>9.3f}")
    a = ratio_line(
        "(a) MRPO K=3 cached / DPO K=1 cached", times, "MRPO K=3 cached", "DPO K=1 cached"
    )
    goal = statistics.median(times["MRPO K=3 cached"]) / base <= 1.05
    print(f"{a}; goal <= 1.05: {'met' if goal else 'NOT met'}")
    print(
        ratio_line("(b) MRPO K=3 live / MRPO K=3 cached", times, "MRPO K=3 live", "MRPO K=3 cached")
    )


def print_cache(rows: list[dict[str, Any]]) -> None:
    cols = ("forward_passes", "misses", "hits", "model_loads", "seconds")
    print(f"\n{'K':<3}{'cache':<8}{'passes':>8}{'misses':>8}{'hits':>6}{'loads':>7}{'seconds':>9}")
    for r in sorted(rows, key=lambda r: (r["mode"] != "shared", r["k"])):
        print(
            f"{r['k']:<3}{r['mode']:<8}{r['forward_passes']:>8}{r['misses']:>8}{r['hits']:>6}"
            f"{r['model_loads']:>7}{r['seconds']:>9.1f}"
        )
    totals = {}
    for mode in ("shared", "fresh"):
        totals[mode] = ReferenceStats(
            **{c: sum(r[c] for r in rows if r["mode"] == mode) for c in cols}
        )
        t = totals[mode]
        print(
            f"{'all':<4}{mode:<7}{t.forward_passes:>8}{t.misses:>8}{t.hits:>6}"
            f"{t.model_loads:>7}{t.seconds:>9.1f}"
        )
    s, f = totals["shared"], totals["fresh"]
    print(
        f"(c) K sweep {list(CACHE_KS)}: shared cache {s.forward_passes} forward passes in "
        f"{s.seconds:.1f} s vs fresh cache per K {f.forward_passes} in {f.seconds:.1f} s "
        f"({f.forward_passes / max(s.forward_passes, 1):.2f}x passes, "
        f"{f.seconds / max(s.seconds, 1e-9):.2f}x time)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("random", "packaged"), default="random")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random model")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per arm first")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per training batch")
    parser.add_argument("--max-length", type=int, default=128, help="tokens, prompt + response")
    parser.add_argument("--pool-size", type=int, default=32, help="preference pairs used")
    parser.add_argument("--ref-batch-size", type=int, default=8, help="pairs per reference pass")
    args = parser.parse_args()
    for name in ("layers", "steps", "batch_size", "max_length", "pool_size", "ref_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main() -> None:
    args = parse_args()
    # training_step logs through self.log, which warns (and does nothing) without a Trainer.
    warnings.filterwarnings("ignore", message=".*self.log.*")
    logging.getLogger("mrpo").setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    print(f"machine: {machine_info()}")
    with tempfile.TemporaryDirectory(prefix="mrpo-bench-train-") as tmp:
        scratch = Path(tmp)
        if args.model == "packaged":
            source = PACKAGED_MODEL
            model_desc = source
        else:
            source = str(write_random_model(scratch / "policy", args.layers))
            model_desc = f"random Llama, SmolLM2-135M width, {args.layers} layers, tiny tokenizer"
        pool, data_source = load_pool(args.pool_size, scratch)
        cache_rows, shared_cache = bench_cache_fill(pool, source, scratch, args)
        arms, info = build_arms(pool, source, shared_cache, args)
        print(
            f"model: {model_desc} ({info['parameters'] / 1e6:.1f}M parameters, float32)\n"
            f"data: {len(pool)} pairs of {data_source}; max length {args.max_length}; "
            f"{info['batches']} batches of {args.batch_size} pairs, padded width mean "
            f"{info['mean_width']:.0f}, max {info['max_width']}\n"
            f"training step: direct training_step + backward + AdamW step + zero_grad; "
            f"{len(arms)} arms interleaved, {args.warmup} warm-up + {args.steps} timed "
            f"steps each, median; live references load {info['live_model_loads']} model copy"
        )
        times = bench_steps(arms, args.steps, args.warmup)
    print_steps(times)
    print(
        f"\nreference cache fill over {len(pool)} pairs, {args.ref_batch_size} pairs per "
        f"forward pass (seconds include model loads and tokenization):"
    )
    print_cache(cache_rows)
    print(
        f"\nload avg at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
