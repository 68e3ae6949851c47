"""Memory and time of the policy's log-probs from its last hidden states: fused LM head vs logits.

From (N, T, H) hidden states and a (V, H) LM head to N sequence log-probs, forward + backward,
in one of these ways (each arm its own process, interleaved in rounds):

- ``fused:<tokens>`` (mrpo's default, ``model.lm_head_chunk_tokens``): only the scored positions
  go through the head, ``<tokens>`` at a time, each tile recomputed in the backward pass
  (``mrpo.logprobs.hidden_sequence_logprobs``); no logits tensor is made;
- ``logits``: the (N, T, V) logits, then ``sequence_logprobs`` (``model.fused_lm_head=false``);
- ``logits:<rows>``: the same with ``model.logprob_chunk_size=<rows>``: float32 log-probs of that
  many rows at a time, recomputed in backward (bounds the float32 copy of bf16 logits).

Reported: the process's peak resident memory above the inputs (hidden states, head weight,
labels), and the seconds of forward + backward.

Usage::

    python benchmarks/bench_logprobs.py                  # 8 x 512 positions, SmolLM2's head
    python benchmarks/bench_logprobs.py --dtype bfloat16 --arms logits,logits:4,logits:1,fused:1024
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def run_arm(args: argparse.Namespace, arm: str) -> dict[str, float]:
    """Forward + backward of one arm in this process: peak RSS growth, seconds."""
    import torch

    from mrpo.logprobs import hidden_sequence_logprobs, sequence_logprobs

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    hidden = torch.randn(args.rows, args.length, args.hidden, dtype=dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden) / args.hidden**0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.rows, args.length))
    labels[:, : int(args.length * args.prompt)] = -100  # the prompt is not scored
    kind, _, size = arm.partition(":")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "fused":
        out = hidden_sequence_logprobs(hidden, weight, None, labels, chunk_tokens=int(size))
    else:
        logits = torch.nn.functional.linear(hidden, weight)
        out = sequence_logprobs(logits, labels, chunk_size=int(size) if size else None)
    out.logps.sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra_gb": (peak - base) / 2**20, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8, help="N: 2 x pairs per batch")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=576, help="SmolLM2-135M's width")
    parser.add_argument("--vocab", type=int, default=49152, help="SmolLM2's vocabulary")
    parser.add_argument("--prompt", type=float, default=0.25, help="unscored fraction of a row")
    parser.add_argument("--dtype", default="float32", choices=("bfloat16", "float32"))
    parser.add_argument("--arms", default="logits,fused:1024,fused:256")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm
    args = parser.parse_args()
    if args.arm is not None:
        print(json.dumps(run_arm(args, args.arm)))
        return
    from bench_train import run_rounds  # a sibling script in benchmarks/

    arms = args.arms.split(",")
    common = [f"--{k}={getattr(args, k)}" for k in ("rows", "length", "hidden", "vocab", "prompt")]
    common.append(f"--dtype={args.dtype}")
    size_gb = args.rows * args.length * args.vocab * (2 if args.dtype == "bfloat16" else 4) / 2**30
    print(
        f"hidden {args.rows} x {args.length} x {args.hidden}, head {args.vocab} x {args.hidden}, "
        f"{args.dtype} (whole logits {size_gb:.2f} GB), {1 - args.prompt:.0%} of positions "
        f"scored; arms {arms}, {args.rounds} rounds"
    )

    def run_one(arm: str) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--arm", arm, *common]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    results = run_rounds(arms, args.rounds, run_one)
    first = arms[0]
    print(f"\n{'arm':<14}{'extra peak GB':>14}{'seconds':>9}{'memory ratio':>14}{'speed':>8}")
    med = {a: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for a, rs in results.items()}
    for arm, m in med.items():
        base = med[first]["extra_gb"]  # 0 when the logits are too small to move the peak
        ratio = m["extra_gb"] / base if base else float("nan")
        speed = med[first]["seconds"] / m["seconds"]
        print(f"{arm:<14}{m['extra_gb']:>14.2f}{m['seconds']:>9.2f}{ratio:>14.2f}{speed:>8.2f}")
    print(f"(ratios against {first}; 'extra' is the peak above the inputs, gradients included)")


if __name__ == "__main__":
    main()
