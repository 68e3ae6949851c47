"""Memory of the policy's log-prob computation: whole vs chunked (``model.logprob_chunk_size``).

``sequence_logprobs`` turns (N, T, V) logits into N sequence log-probs in float32. With bf16
logits (GPU training in ``bf16-mixed``) the float32 copy of all rows is the largest tensor of
the step; with ``chunk_size`` rows at a time, and each chunk recomputed in the backward pass,
at most ``chunk_size x T x V`` float32 values are alive. Each arm runs forward + backward from
a leaf logits tensor in its own process and reports the process's peak resident memory above
the logits themselves, and the time. Arms run interleaved, in rounds.

Usage::

    python benchmarks/bench_logprobs.py                       # 8 x 512 x 49,152 bf16 logits
    python benchmarks/bench_logprobs.py --dtype float32 --rows 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def run_arm(args: argparse.Namespace, chunk: int | None) -> dict[str, float]:
    """Forward + backward of ``sequence_logprobs`` in this process: peak RSS growth, seconds."""
    import torch

    from mrpo.logprobs import sequence_logprobs

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    logits = torch.randn(args.rows, args.length, args.vocab, dtype=dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.rows, args.length))
    labels[:, : args.length // 4] = -100  # the prompt is not scored
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = sequence_logprobs(logits, labels, chunk_size=chunk)
    out.logps.sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra_gb": (peak - base) / 2**20, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8, help="N: 2 x pairs per batch")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=49152, help="SmolLM2's vocabulary")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--chunks", default="none,4,1", help="chunk sizes; none = all rows")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm
    args = parser.parse_args()
    if args.arm is not None:
        chunk = None if args.arm == "none" else int(args.arm)
        print(json.dumps(run_arm(args, chunk)))
        return
    from bench_train import run_rounds  # a sibling script in benchmarks/

    arms = args.chunks.split(",")
    common = [
        f"--rows={args.rows}",
        f"--length={args.length}",
        f"--vocab={args.vocab}",
        f"--dtype={args.dtype}",
    ]
    size_gb = args.rows * args.length * args.vocab * (2 if args.dtype == "bfloat16" else 4) / 2**30
    print(
        f"logits {args.rows} x {args.length} x {args.vocab} {args.dtype} ({size_gb:.2f} GB); "
        f"arms (chunk size) {arms}, {args.rounds} rounds"
    )

    def run_one(arm: str) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--arm", arm, *common]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    results = run_rounds(arms, args.rounds, run_one)
    whole = arms[0]
    print(f"\n{'chunk size':<12}{'extra peak GB':>14}{'seconds':>9}{'memory ratio':>14}")
    med = {a: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for a, rs in results.items()}
    for arm, m in med.items():
        base = med[whole]["extra_gb"]  # 0 when the logits are too small to move the peak
        ratio = m["extra_gb"] / base if base else float("nan")
        print(f"{arm:<12}{m['extra_gb']:>14.2f}{m['seconds']:>9.2f}{ratio:>14.2f}")
    print(f"(against chunk size {whole}; 'extra' leaves out the logits, not their gradient)")


if __name__ == "__main__":
    main()
