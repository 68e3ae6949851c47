"""Benchmark mrpo's own GSM8K and TruthfulQA scoring against lm-evaluation-harness's.

In one run, on the same model and the same first questions of the local data mirror, times
mrpo's tasks (``gsm8k``: continuous batching over ``--batch-size`` slots; ``truthfulqa``:
batched log-likelihoods with a shared prefix) and lm-eval's (``gsm8k``, and
``truthfulqa_mc1`` + ``truthfulqa_mc2``, which together score what mrpo's ``truthfulqa``
scores), run by ``lm_eval.simple_evaluate`` on the same in-memory model at lm-eval's default
batch size of 1 (``--lm-eval-batch-size``). Prints each arm's wall time, the speed ratios
(lm-eval seconds / mrpo seconds) and the per-item comparison of tests/support/parity.py (the
results must be identical for the ratio to mean anything).

Usage (the lead's full run: GSM8K first 50, TruthfulQA first 100)::

    MRPO_DATA_DIR=/path/to/data python benchmarks/bench_vs_lm_eval.py --gsm8k 50 --truthfulqa 100
    python benchmarks/bench_vs_lm_eval.py --gsm8k 5 --truthfulqa 20   # a quick check

Per task, mrpo's arm runs first, then lm-eval's; data loading is not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from mrpo.models import load_model, load_tokenizer

# The per-item comparison is test support (tests/support), not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.parity import compare_run, run_parity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--data-dir", default=None, help="default: MRPO_DATA_DIR")
    parser.add_argument("--gsm8k", type=int, default=50, help="GSM8K questions (0: skip)")
    parser.add_argument("--truthfulqa", type=int, default=100, help="TruthfulQA questions")
    parser.add_argument("--batch-size", type=int, default=16, help="mrpo's eval.batch_size")
    parser.add_argument("--lm-eval-batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, trainable=False)
    tokenizer = load_tokenizer(args.model)
    limits = {k: n for k, n in (("gsm8k", args.gsm8k), ("truthfulqa", args.truthfulqa)) if n}
    run = run_parity(
        model,
        tokenizer,
        limits,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        lm_eval_batch_size=args.lm_eval_batch_size,
    )
    found = compare_run(run, args.data_dir)
    report: dict[str, object] = {
        "model": args.model,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "lm_eval_batch_size": args.lm_eval_batch_size,
    }
    print(f"torch threads {torch.get_num_threads()}, mrpo batch {args.batch_size}, "
          f"lm-eval batch {args.lm_eval_batch_size}")  # fmt: skip
    print(f"{'task':<12}{'n':>5}{'mrpo s':>10}{'lm-eval s':>11}{'ratio':>8}  per item")
    for name, n in limits.items():
        native, lm = run.native[name].seconds, run.lm_eval_seconds(name)
        comparison = found[name]
        verdict = "identical" if comparison.identical else f"DIFFERENT: {asdict(comparison)}"
        print(f"{name:<12}{n:>5}{native:>10.1f}{lm:>11.1f}{lm / native:>8.2f}  {verdict}")
        report[name] = {
            "questions": n,
            "mrpo_seconds": native,
            "lm_eval_seconds": {k: t.seconds for k, t in run.lm_eval[name].items()},
            "ratio": lm / native,
            "mrpo_metrics": run.native[name].result.metrics,
            "lm_eval_metrics": {k: t.result.metrics for k, t in run.lm_eval[name].items()},
            "comparison": asdict(comparison),
            "identical": comparison.identical,
        }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
