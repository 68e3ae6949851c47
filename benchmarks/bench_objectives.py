"""Cost of the objectives relative to one forward pass of a tiny Llama, measured in one run.

The objectives work on (B,) and (K, B) log-prob tensors, so their cost should be negligible
next to any model forward pass; this script checks that claim. It times, with warm-up and the
median of repeats:

- one forward pass (autograd on, as in training) of a tiny random Llama (hidden 64, 2 layers,
  vocabulary 1000) on 2B sequences of T tokens (chosen and rejected rows of a batch);
- each objective's loss (forward) and loss + backward on B pairs with K references.

Usage::

    python benchmarks/bench_objectives.py [--batch 64] [--refs 8] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mrpo.objectives import get_objective
from mrpo.testing.models import make_tiny_model

CONFIGS: list[tuple[str, str, dict]] = [
    ("dpo", "dpo", {}),
    ("multi_dpo (arwc)", "multi_dpo", {}),
    ("multi_dpo (arwc, ctro)", "multi_dpo", {"ctro": True}),
    ("mrpo (arwc, ctro)", "mrpo", {}),
    ("mrpo (sliding_window, ctro)", "mrpo", {"weighting": "sliding_window"}),
]


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_forward_seconds(batch: int, tokens: int, repeats: int) -> float:
    model = make_tiny_model(1000, hidden_size=64, num_layers=2, max_position_embeddings=tokens)
    ids = torch.randint(0, 1000, (2 * batch, tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    return median_seconds(lambda: model(input_ids=ids, attention_mask=mask).logits, repeats)


def objective_seconds(
    name: str, options: dict, batch: int, refs: int, repeats: int
) -> tuple[float, float]:
    """(forward, forward + backward) median seconds of one objective call."""
    gen = torch.Generator().manual_seed(1)
    policy = (-100 * torch.rand(2, batch, generator=gen)).requires_grad_(True)
    ref_c, ref_r = -100 * torch.rand(2, refs, batch, generator=gen)
    objective = get_objective(name, beta=0.1, **options)

    def forward() -> torch.Tensor:
        loss = objective(policy[0], policy[1], ref_c, ref_r).losses.mean()
        objective.observe(ref_c, ref_r)  # a training batch's state update, as the trainer does
        return loss

    def forward_backward() -> None:
        forward().backward()
        policy.grad = None

    return median_seconds(forward, repeats), median_seconds(forward_backward, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="preference pairs B")
    parser.add_argument("--refs", type=int, default=8, help="references K")
    parser.add_argument("--tokens", type=int, default=128, help="sequence length T")
    parser.add_argument("--model-repeats", type=int, default=15)
    parser.add_argument("--objective-repeats", type=int, default=300)
    args = parser.parse_args()

    model = model_forward_seconds(args.batch, args.tokens, args.model_repeats)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={args.batch}, "
        f"K={args.refs}; tiny Llama forward on {2 * args.batch}x{args.tokens} tokens: "
        f"{model * 1e3:.2f} ms (median of {args.model_repeats})"
    )
    print(f"{'objective':<30}{'fwd ms':>10}{'fwd/model':>12}{'fwd+bwd ms':>13}{'f+b/model':>12}")
    for label, name, options in CONFIGS:
        forward, both = objective_seconds(
            name, options, args.batch, args.refs, args.objective_repeats
        )
        print(
            f"{label:<30}{forward * 1e3:>10.3f}{forward / model:>12.1e}"
            f"{both * 1e3:>13.3f}{both / model:>12.1e}"
        )


if __name__ == "__main__":
    main()
