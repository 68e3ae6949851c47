"""Time loading the packaged SmolLM2-135M-Instruct and print one greedy chat completion.

    python benchmarks/load_packaged_model.py [--cache-dir DIR]

The first load converts the GGUF file into a fresh temporary cache (de-quantize + save), so
its time is what a new user waits once; the second load reads the converted directory, which
is what every later run pays. Pass --cache-dir to time against an existing cache instead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mrpo.models import PACKAGED_MODEL, load_model, load_tokenizer, model_fingerprint


def timed_load(cache_dir: Path) -> tuple[float, torch.nn.Module, object]:
    start = time.perf_counter()
    model = load_model(PACKAGED_MODEL, cache_dir=cache_dir, trainable=False)
    tokenizer = load_tokenizer(PACKAGED_MODEL, cache_dir=cache_dir)
    return time.perf_counter() - start, model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mrpo-bench-") as scratch:
        cache_dir = args.cache_dir or Path(scratch)
        first, _, _ = timed_load(cache_dir)
        cached, model, tokenizer = timed_load(cache_dir)

        messages = [{"role": "user", "content": "What is the capital of France?"}]
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=args.max_new_tokens, do_sample=False)
        generation = time.perf_counter() - start
        new_tokens = output[0, encoded["input_ids"].shape[1] :]

        print(f"model:             {PACKAGED_MODEL} ({model_fingerprint(PACKAGED_MODEL)[:17]})")
        print(f"parameters:        {sum(p.numel() for p in model.parameters()):,}")
        print(f"first load:        {first:.1f} s (GGUF de-quantize + convert + load)")
        print(f"cached load:       {cached:.2f} s (model + tokenizer from the converted dir)")
        print(f"greedy generation: {len(new_tokens)} tokens in {generation:.2f} s")
        print(f"prompt:            {messages[0]['content']!r}")
        print(f"reply:             {tokenizer.decode(new_tokens, skip_special_tokens=False)!r}")


if __name__ == "__main__":
    main()
