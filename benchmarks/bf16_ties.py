"""How often batched bf16 decoding gives another text than transformers' own greedy ``generate``.

In float32 the slot decoder's texts equal ``generate``'s (tests/test_eval_attention.py). In
bf16 a decoding step of several rows runs its matmuls and attention in other shapes than a
batch of one, so logits can differ in their last bit; where the two best tokens are that
close (a tie to one bf16 unit in the last place), the argmax, and then the rest of the text,
can differ. This script counts the texts that equal ``generate``'s with 1 slot and with
several, and, for each text that differs, the gap between the two best logits of
``generate`` at the first token that differs, in bf16 units in the last place (ulps).

Usage (tiny random models of three families, GSM8K questions from ``MRPO_DATA_DIR``)::

    python benchmarks/bf16_ties.py --prompts 24 --slots 1 4

Prints one line per family and slot count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mrpo.evals.generate import generate_until
from mrpo.evals.gsm8k.loader import load_gsm8k
from mrpo.testing.tokenizers import make_tiny_tokenizer

# The tiny models of three families are test support (tests/support), not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.models import TINY_FAMILIES


def ulps(a: float, b: float) -> float:
    """|a - b| in bf16 units in the last place at the larger magnitude."""
    big = torch.tensor(max(abs(a), abs(b)), dtype=torch.bfloat16)
    ulp = float(torch.nextafter(big, torch.tensor(float("inf"), dtype=torch.bfloat16)) - big)
    return abs(a - b) / ulp


def reference(model, tokenizer, prompt: str, new: int) -> tuple[list[int], list[torch.Tensor]]:
    """``generate``'s greedy tokens and the logits of each step, the prompt alone."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
        pad_token_id=0, output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    return out.sequences[0, len(ids) :].tolist(), [s[0].float() for s in out.logits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--draft-tokens", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = make_tiny_tokenizer("chatml")
    room = 256 - args.new_tokens  # the tiny models' context (GPT-2's learned positions)
    questions = (f"Question: {r.question}\nAnswer:" for r in load_gsm8k("test"))
    fits = (q for q in questions if len(tokenizer.encode(q, add_special_tokens=False)) <= room)
    prompts = [q for _, q in zip(range(args.prompts), fits, strict=False)]
    for family, build in TINY_FAMILIES.items():
        model = build(len(tokenizer), 3).to(torch.bfloat16).eval()
        model.generation_config.eos_token_id = None  # every text runs to the budget
        expected = [reference(model, tokenizer, p, args.new_tokens) for p in prompts]
        for slots in args.slots:
            out = generate_until(
                model, tokenizer, prompts, stop=[], max_new_tokens=args.new_tokens,
                batch_size=slots, draft_tokens=args.draft_tokens,
            )  # fmt: skip
            gaps = []
            for generation, (tokens, logits) in zip(out, expected, strict=True):
                if generation.text == tokenizer.decode(tokens, skip_special_tokens=True):
                    continue
                # The text re-encoded: with no stop and no eos, its tokens (up to merges).
                got = tokenizer.encode(generation.text, add_special_tokens=False)
                pairs = zip(got, tokens, strict=False)
                at = next((i for i, (a, b) in enumerate(pairs) if a != b), 0)
                best = logits[at].topk(2).values.tolist()
                gaps.append(round(ulps(best[0], best[1]), 2))
            equal = len(prompts) - len(gaps)
            print(
                f"{family:6s} bf16 slots={slots}: {equal} of {len(prompts)} texts equal "
                f"generate's; top-2 gap at the first difference (ulps): {gaps}",
                flush=True,
            )


if __name__ == "__main__":
    main()
