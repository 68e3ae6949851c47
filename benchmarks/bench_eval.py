"""Benchmark evaluation throughput: batched vs one-by-one generation and log-likelihood scoring.

Measures, in one run on the same model and prompts:

- GSM8K 5-shot generation (the harness prompts): one prompt at a time vs ``--batch-size``
  prompts per ``generate`` call; generated tokens/s, the speed-up, and whether the texts agree;
- TruthfulQA log-likelihood scoring: one request per forward (as the harness at batch size 1)
  vs batched, without and with shared-prefix caching; tokens/s counts the context and
  continuation tokens of every request, and the largest log-likelihood difference is reported.

Usage (defaults: the packaged SmolLM2-135M-Instruct, the data in ``MRPO_DATA_DIR``, 32 questions
in batches of 32, 256 new tokens, the GPU when there is one)::

    python benchmarks/bench_eval.py
    python benchmarks/bench_eval.py --questions 8 --batch-size 8 --parts loglik   # small CPU run
    python benchmarks/bench_eval.py --model random   # a random Llama of SmolLM2's shape

A batch generates until its longest answer stops, so generation gains most from batches much
larger than the spread of answer lengths (on a GPU, where a decoding step costs about the same
for 1 or 32 rows); on a CPU, compute grows with the batch and batching gains little.

Prints a table and, with ``--json PATH``, writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from mrpo.evals.generate import DRAFT_TOKENS, generate_until
from mrpo.evals.gsm8k import STOP_SEQUENCES, build_prompts
from mrpo.evals.gsm8k.loader import load_gsm8k
from mrpo.evals.loglik import loglikelihood
from mrpo.evals.truthfulqa import TARGET_DELIMITER, doc_to_text
from mrpo.evals.truthfulqa.loader import load_truthfulqa_mc


def load(model_source: str, device: str) -> tuple[Any, Any]:
    """The model and tokenizer to benchmark, in float32 on ``device``, in eval mode."""
    if model_source == "random":
        from transformers import LlamaConfig, LlamaForCausalLM

        from mrpo.testing.tokenizers import make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer("chatml")
        config = LlamaConfig(  # SmolLM2-135M's shape, with the tiny tokenizer's vocabulary
            vocab_size=len(tokenizer),
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    else:
        from mrpo.models import load_model, load_tokenizer

        model = load_model(model_source, trainable=False)
        tokenizer = load_tokenizer(model_source)
    return model.to(device).eval(), tokenizer


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    """``fn()`` and its wall-clock seconds (CUDA work included)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def bench_generation(model, tokenizer, prompts, args) -> dict[str, float]:
    def run(batch_size: int, draft_tokens: int = DRAFT_TOKENS):
        return generate_until(
            model,
            tokenizer,
            prompts,
            stop=STOP_SEQUENCES,
            max_new_tokens=args.max_new_tokens,
            batch_size=batch_size,
            draft_tokens=draft_tokens,
        )

    generate_until(model, tokenizer, prompts[:1], stop=STOP_SEQUENCES, max_new_tokens=4)  # warm-up
    single, t_single = timed(lambda: run(1), args.device)
    batched, t_batched = timed(lambda: run(args.batch_size), args.device)
    # The same slots, one token per step (eval.draft_tokens=0): what guessing saves.
    unguessed, t_unguessed = timed(lambda: run(args.batch_size, 0), args.device)
    tokens_single = sum(g.num_tokens for g in single)
    tokens_batched = sum(g.num_tokens for g in batched)
    return {
        "prompts": len(prompts),
        "mean_prompt_tokens": sum(g.prompt_tokens for g in single) / len(single),
        "one_by_one_s": t_single,
        "batched_s": t_batched,
        "one_by_one_tokens_per_s": tokens_single / t_single,
        "batched_tokens_per_s": tokens_batched / t_batched,
        "speedup": t_single / t_batched,
        "texts_differing": sum(a.text != b.text for a, b in zip(single, batched, strict=True)),
        "batched_one_token_per_step_s": t_unguessed,
        "guessing_speedup": t_unguessed / t_batched,
        "texts_differing_guessing": sum(
            a.text != b.text for a, b in zip(unguessed, batched, strict=True)
        ),
    }


def bench_loglik(model, tokenizer, requests, args) -> dict[str, float]:
    def run(batch_size: int, share_prefix: bool):
        return loglikelihood(
            model, tokenizer, requests, batch_size=batch_size, share_prefix=share_prefix
        )

    loglikelihood(model, tokenizer, requests[: args.batch_size], batch_size=args.batch_size)
    single, t_single = timed(lambda: run(1, False), args.device)  # the harness's default way
    padded, t_padded = timed(lambda: run(args.batch_size, False), args.device)
    batched, t_batched = timed(lambda: run(args.batch_size, True), args.device)
    read = sum(len(tokenizer.encode(c + k, add_special_tokens=False)) for c, k in requests)
    return {
        "requests": len(requests),
        "tokens_read": read,
        "one_by_one_s": t_single,
        "batched_no_prefix_sharing_s": t_padded,
        "batched_s": t_batched,
        "one_by_one_tokens_per_s": read / t_single,
        "batched_no_prefix_sharing_tokens_per_s": read / t_padded,
        "batched_tokens_per_s": read / t_batched,
        "speedup": t_single / t_batched,
        "max_abs_loglik_diff": max(
            abs(a.logprob - b.logprob)
            for other in (padded, batched)
            for a, b in zip(single, other, strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--data-dir", default=None, help="default: MRPO_DATA_DIR, then the hub")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--questions", type=int, default=32, help="GSM8K questions")
    parser.add_argument("--tqa-questions", type=int, default=32, help="TruthfulQA questions")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--parts", default="generation,loglik", help="comma-separated")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    model, tokenizer = load(args.model, args.device)
    test = load_gsm8k("test", data_dir=args.data_dir)[: args.questions]
    prompts = build_prompts(test, load_gsm8k("train", data_dir=args.data_dir))
    tqa = load_truthfulqa_mc(data_dir=args.data_dir)[: args.tqa_questions]
    requests = [
        (doc_to_text(r.question), TARGET_DELIMITER + c)
        for r in tqa
        for c in dict.fromkeys(r.mc1_choices + r.mc2_choices)
    ]
    results = {
        "model": args.model,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
    }
    parts = args.parts.split(",")
    if "generation" in parts:
        results["generation"] = bench_generation(model, tokenizer, prompts, args)
    if "loglik" in parts:
        results["loglik"] = bench_loglik(model, tokenizer, requests, args)
    for section in (p for p in ("generation", "loglik") if p in results):
        print(f"[{section}]")
        for key, value in results[section].items():
            print(
                f"  {key:26s} {value:.4g}" if isinstance(value, float) else f"  {key:26s} {value}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
