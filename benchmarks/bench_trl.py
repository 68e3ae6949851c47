"""mrpo against TRL's DPOTrainer and a bare PyTorch loop: DPO, same model, data and settings.

Arms (each a separate process, so peak memory is its own; run interleaved in rounds):

- ``trl``: ``trl.DPOTrainer`` with its defaults for the reference (a frozen copy of the policy,
  run every step);
- ``trl_precompute``: the same with ``precompute_ref_log_probs=True``;
- ``trl_liger`` (GPUs): ``trl_precompute`` with ``use_liger_kernel=True`` (Liger's Triton
  kernels, its fused linear DPO loss): TRL's two fastest settings together;
- ``mrpo_live``: ``PreferenceModule`` in a Lightning ``Trainer``, reference ``self`` run live;
- ``mrpo_cached``: the same with the reference log-probs from mrpo's cache (``mrpo-train``'s
  default), and ``mrpo-train``'s default layout: the prompt computed once per pair
  (``data.prefix_sharing=true``);
- ``mrpo_noshare``: ``mrpo_cached`` with each pair's prompt computed twice, once with each
  response (``data.prefix_sharing=false``, the layout before prefix sharing);
- ``mrpo_pack``: ``mrpo_cached`` with the pairs packed padding-free into rows no wider than the
  batch's longest (``data.packing=true``);
- ``mrpo_packflex`` (GPUs): ``mrpo_pack`` with the policy under FlexAttention
  (``model.attn_implementation=flex_attention``), whose block mask skips fully masked tiles;
- ``bare``: a plain PyTorch loop over the batches of ``mrpo_cached`` (forward of its rows,
  token log-probs of the scored positions through the same fused LM head as mrpo's
  (``mrpo.logprobs.batch_sequence_logprobs``), DPO loss against the cached reference
  log-probs, backward, gradient clipping, AdamW step): the floor that mrpo's training step is
  measured against.

Options of mrpo's training step, as more arms (``--arms`` picks them; not in the default set):

- ``mrpo_nogroup``: ``mrpo_cached`` with shuffled batches instead of length-grouped ones
  (``data.group_by_length=false``): what grouping saves in padding;
- ``mrpo_logits``: ``mrpo_cached`` with the logits path instead of the fused LM head
  (``model.fused_lm_head=false``): logits from the first scored position on, then log-softmax;
- ``mrpo_fulllogits``: ``mrpo_cached`` with logits at every position (the policy behind a
  wrapper that is neither a transformers model nor takes ``logits_to_keep``);
- ``mrpo_compile``: ``mrpo_cached`` with the policy compiled by ``torch.compile``
  (``model.compile=true``); its first steps include the compilation, reported apart.

Equal settings: sigmoid DPO with β = 0.1, float32 on CPU (``--device cuda --precision bf16``:
bf16 autocast on a GPU, peak GPU memory reported too), batch size ``--batch-size`` pairs,
fused AdamW (lr 5e-6, no weight decay, constant schedule: TRL's default optimizer and mrpo's
``optimizer=adamw``; under bf16 mrpo's arms use the unfused AdamW, because Lightning cannot
clip a fused optimizer's gradients under mixed precision), gradient norm clipped at 1.0,
gradient checkpointing off in every arm unless ``--gradient-checkpointing`` turns it on in
every arm (TRL's ``DPOConfig`` defaults to on, mrpo's ``model.gradient_checkpointing`` to off:
the flag sets both), one epoch over the same pairs, which are HH-RLHF harmless-base test pairs
(``$MRPO_DATA_DIR``) short enough that neither framework truncates them. Timed: the training
loop of the epoch (from train start to train end; model loading, tokenization and the
reference precomputation are reported apart).
Tokens/s counts the work both frameworks are asked to do: prompt + chosen and prompt +
rejected, from each framework's own tokenization (TRL's token count), so that a token a layout
does not compute (a shared prompt) shows as speed; "computed" is the fraction of those tokens
that went through the policy (the rest were saved by prefix sharing).

Usage::

    pip install trl           # benchmark-only dependency (the `bench` extra)
    python benchmarks/bench_trl.py                      # random SmolLM2-width model, 4 layers
    python benchmarks/bench_trl.py --model packaged --pairs 32 --rounds 1
    python benchmarks/bench_trl.py \
        --arms mrpo_cached,mrpo_nogroup,mrpo_logits,mrpo_fulllogits,mrpo_compile
    python benchmarks/bench_trl.py --gradient-checkpointing   # TRL's default, in every arm
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# The model without logits_to_keep (arm mrpo_fulllogits) is test support, not in the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ARMS = ("trl", "trl_precompute", "mrpo_live", "mrpo_cached", "mrpo_noshare", "mrpo_pack", "bare")
OPTION_ARMS = ("mrpo_nogroup", "mrpo_logits", "mrpo_fulllogits", "mrpo_compile")
# GPU-only arms: TRL with its Liger kernels (Triton), packed rows under FlexAttention.
GPU_ARMS = ("trl_liger", "mrpo_packflex")
# The layout of a batch's pairs in each mrpo arm (mrpo-train's default: the prompt shared).
LAYOUT_ARMS = {
    "mrpo_noshare": {"share_prefix": False},
    "mrpo_pack": {"pack": True},
    "mrpo_packflex": {"pack": True},
}
BETA = 0.1
LR = 5e-6
MAX_GRAD_NORM = 1.0


# --- data and model (shared by the arms) ---------------------------------------------------


def prepare(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Write the model and the selected pairs into ``scratch``; return their description."""
    from bench_train import write_random_model  # a sibling script in benchmarks/

    from mrpo.data.preference import load_preference_data
    from mrpo.data.tokenize import tokenize_pairs
    from mrpo.models import PACKAGED_MODEL, load_tokenizer

    if args.model == "packaged":
        source = PACKAGED_MODEL
    elif args.model == "random":
        source = str(write_random_model(scratch / "policy", args.layers))
    else:  # a model directory (the device check's random-weight architectures)
        source = args.model
    tokenizer = load_tokenizer(source)
    loaded = load_preference_data(
        "Anthropic/hh-rlhf", subset="harmless-base", split="test", drop_invalid=True, limit=1000
    )
    # Pairs that fit with room to spare (chat templates differ by a few tokens between the
    # frameworks' ways of rendering them), so that neither side truncates.
    tokenized = tokenize_pairs(loaded.examples, tokenizer, max_length=10**6).pairs
    budget = args.max_length - 16
    keep = [
        ex
        for ex, pair in zip(loaded.examples, tokenized, strict=True)
        if len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)) <= budget
    ][: args.pairs]
    if len(keep) < args.pairs:
        raise SystemExit(f"only {len(keep)} pairs fit in --max-length {args.max_length}")
    rows = [
        {
            "prompt": [{"role": m["role"], "content": m["content"]} for m in ex.prompt],
            "chosen": ex.chosen,
            "rejected": ex.rejected,
        }
        for ex in keep
    ]
    data = scratch / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"source": source, "data": str(data), "pairs": len(rows)}


# --- the arms ------------------------------------------------------------------------------


def watch_batches(model: Any) -> dict[str, int]:
    """Record the largest (rows x padded width) the model is trained on, and its rows and width.

    Peak memory follows the largest batch, which depends on how each framework groups pairs;
    forward passes without gradients (reference scoring) are not counted.
    """
    import torch

    largest = {"max_batch_tokens": 0, "max_batch_rows": 0, "max_batch_width": 0}

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not torch.is_grad_enabled() or ids is None:
            return
        if ids.numel() > largest["max_batch_tokens"]:
            rows, width = ids.shape
            largest.update(
                max_batch_tokens=rows * width, max_batch_rows=rows, max_batch_width=width
            )

    # On the backbone: mrpo's fused LM-head path (and TRL's) call it, not the model's forward.
    model.base_model.register_forward_pre_hook(hook, with_kwargs=True)
    return largest


def run_trl(
    setup: dict[str, Any], args: argparse.Namespace, precompute: bool, liger: bool = False
) -> dict[str, Any]:
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from mrpo.models import load_model, load_tokenizer

    rows = [json.loads(line) for line in Path(setup["data"]).read_text().splitlines()]
    dataset = datasets.Dataset.from_list(
        [
            {
                "prompt": r["prompt"],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    model = load_model(setup["source"], trainable=True)
    largest = watch_batches(model)
    tokenizer = load_tokenizer(setup["source"])
    times: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            times["start"] = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            times["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=1,
            learning_rate=LR,
            optim="adamw_torch_fused",  # its default with torch >= 2.8; named for clarity
            weight_decay=0.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=MAX_GRAD_NORM,
            gradient_checkpointing=args.gradient_checkpointing,
            beta=BETA,
            loss_type=["sigmoid"],
            max_length=args.max_length,
            precompute_ref_log_probs=precompute,
            use_liger_kernel=liger,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=args.device == "cpu",
            bf16=args.precision == "bf16",
            fp16=False,
            seed=0,
        )
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        before = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - before
        train = trainer.train_dataset
        tokens = sum(
            2 * len(p) + len(c) + len(r)
            for p, c, r in zip(
                train["prompt_ids"], train["chosen_ids"], train["rejected_ids"], strict=True
            )
        )
        steps = trainer.state.global_step
    loop = times["end"] - times["start"]
    return {
        "loop_s": loop,
        "outside_loop_s": total - loop,
        "tokens": tokens,
        "steps": steps,
        **largest,
    }


def arm_layout(arm: str) -> Any:
    """The ``PairLayout`` of an mrpo arm: ``mrpo-train``'s default unless the arm changes it."""
    from mrpo.data.pipeline import DataConfig, pair_layout

    data = DataConfig()
    layout = pair_layout(data)
    return dataclasses.replace(layout, **LAYOUT_ARMS.get(arm, {}))


def mrpo_parts(
    setup: dict[str, Any], args: argparse.Namespace, cached: bool, layout: Any
) -> dict[str, Any]:
    """Policy, tokenizer, pairs and reference log-probs (cached table or live scorer)."""
    from mrpo.data.layout import layout_for
    from mrpo.data.preference import load_preference_data
    from mrpo.data.tokenize import tokenize_pairs
    from mrpo.models import enable_gradient_checkpointing, load_model, load_tokenizer
    from mrpo.references import LiveReferences, ReferenceEnsemble, ReferenceSpec

    examples = load_preference_data(setup["data"]).examples
    tokenizer = load_tokenizer(setup["source"])
    pairs = tokenize_pairs(examples, tokenizer, max_length=args.max_length).pairs
    flex = "flex_attention" if "packflex" in setup.get("arm", "") else None
    policy = load_model(setup["source"], trainable=True, attn_implementation=flex)
    policy.train()
    if args.device == "cuda":  # the bare loop's device; Lightning moves mrpo's arms itself
        policy.to("cuda")
    if args.gradient_checkpointing:  # mrpo's arms and the bare loop
        enable_gradient_checkpointing(policy)
    largest = watch_batches(policy)
    layout = layout_for(policy, layout)
    ensemble = ReferenceEnsemble(
        [ReferenceSpec("self")],
        policy_source=setup["source"],
        max_length=args.max_length,
        cache_dir=Path(setup["scratch"]) / "refcache",
        batch_size=args.batch_size,
        layout=layout,
    )
    start = time.perf_counter()
    table = ensemble.table(examples, progress=False) if cached else None
    live = None if cached else LiveReferences(ensemble, policy=policy, examples=examples)
    return {
        "policy": policy,
        "tokenizer": tokenizer,
        "pairs": pairs,
        "table": table,
        "live": live,
        "reference_s": time.perf_counter() - start,
        "largest": largest,
        "layout": layout,
        "tokens": sum(
            2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs
        ),
    }


def run_mrpo(
    setup: dict[str, Any],
    args: argparse.Namespace,
    arm: str,
    cached: bool,
    option: str | None = None,
) -> dict[str, Any]:
    """One epoch of mrpo's training step in a Lightning ``Trainer``; ``option`` as in the arms."""
    import lightning as L
    import torch

    from mrpo.data.module import PreferenceDataModule
    from mrpo.models import compile_policy
    from mrpo.objectives import get_objective
    from mrpo.training.module import PreferenceModule
    from support.models import AllLogits

    parts = mrpo_parts(setup, args, cached, arm_layout(arm))
    policy = parts["policy"]
    if option == "compile":
        compile_policy(policy)
    if option == "fulllogits":
        policy = AllLogits(policy)
    module = PreferenceModule(
        policy,
        parts["tokenizer"],
        get_objective("dpo", beta=BETA),
        functools.partial(
            torch.optim.AdamW, lr=LR, weight_decay=0.0, fused=args.precision == "fp32"
        ),
        scheduler_name="constant",
        fused_head=option != "logits",
        live_references=parts["live"],
    )
    data = PreferenceDataModule(
        parts["pairs"],
        [],
        pad_token_id=parts["tokenizer"].pad_token_id,
        ref_lookup=parts["table"],
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        group_by_length=option != "nogroup",
        layout=parts["layout"],
    )
    clock = step_clock()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if args.precision == "bf16" else "32-true",
        gradient_clip_val=MAX_GRAD_NORM,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=data)
    return {
        "loop_s": clock.end - clock.start,
        "reference_s": parts["reference_s"],
        **parts["largest"],
        "tokens": parts["tokens"],
        "steps": trainer.global_step,
        **clock.figures(),
    }


def step_clock() -> Any:
    """A Lightning callback that times the loop and each step, and counts each batch's real
    and padded tokens (Lightning is imported here, so that the TRL arms never load it)."""
    import lightning as L

    from mrpo.logprobs import scored_window

    nan = float("nan")

    class StepClock(L.Callback):
        def __init__(self) -> None:
            self.start = self.end = self._t = 0.0
            self.steps: list[tuple[float, int, int]] = []  # (seconds, real, padded tokens)
            self.windows: list[float] = []  # fraction of positions that get logits

        def on_train_start(self, *a: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_start(self, *a: Any) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, *a: Any):
            mask = batch.attention_mask
            self.steps.append((time.perf_counter() - self._t, int(mask.sum()), mask.numel()))
            if batch.packed is None:  # the logits window of the padded layout's logits path
                self.windows.append(scored_window(batch.labels) / batch.labels.shape[1])

        def on_train_end(self, *a: Any) -> None:
            self.end = time.perf_counter()

        def figures(self) -> dict[str, float]:
            """Padding fraction, positions with logits, first step's seconds, later tokens/s."""
            real = sum(r for _, r, _ in self.steps)
            padded = sum(p for _, _, p in self.steps)
            rest = self.steps[1:]
            return {
                "padding": 1 - real / padded,
                "computed_tokens": real,
                "logits_window": sum(self.windows) / len(self.windows) if self.windows else nan,
                "first_step_s": self.steps[0][0],
                "steady_tokens_per_s": sum(r for _, r, _ in rest) / sum(t for t, _, _ in rest),
            }

    return StepClock()


def run_bare(setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The same epoch as ``mrpo_cached`` (same batches), as a plain PyTorch loop."""
    import torch
    import torch.nn.functional as F

    from mrpo.data.collate import LengthGroupedBatchSampler, PreferenceCollator, pair_lengths
    from mrpo.logprobs import batch_sequence_logprobs

    parts = mrpo_parts(setup, args, cached=True, layout=arm_layout("mrpo_cached"))
    policy, pairs = parts["policy"], parts["pairs"]
    collate = PreferenceCollator(
        parts["tokenizer"].pad_token_id, ref_lookup=parts["table"], layout=parts["layout"]
    )
    sampler = LengthGroupedBatchSampler(pair_lengths(pairs), args.batch_size, seed=0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0, fused=True)
    start = time.perf_counter()
    steps = computed = 0
    autocast = torch.autocast(args.device, torch.bfloat16, enabled=args.precision == "bf16")
    for rows in sampler:
        # collation is loop work in every arm
        batch = collate([pairs[i] for i in rows]).to(args.device)
        steps += 1
        computed += int(batch.attention_mask.sum())
        # mrpo_cached's rows and log-prob kernel (the LM head on the scored positions only).
        with autocast:
            logps = batch_sequence_logprobs(policy, batch).logps
        b = logps.shape[0] // 2
        margin = (logps[:b] - logps[b:]) - (batch.ref_chosen[0] - batch.ref_rejected[0])
        loss = -F.logsigmoid(BETA * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {
        "loop_s": time.perf_counter() - start,
        "reference_s": parts["reference_s"],
        **parts["largest"],
        "tokens": parts["tokens"],
        "computed_tokens": computed,
        "steps": steps,
    }


def run_arm(arm: str, setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Run one arm in this process; add tokens/s and the process's peak resident memory."""
    import torch

    torch.manual_seed(0)
    if arm.startswith("trl"):
        liger = arm == "trl_liger"  # precomputed reference too: TRL's fastest setting
        result = run_trl(setup, args, precompute=arm == "trl_precompute" or liger, liger=liger)
    elif arm == "bare":
        result = run_bare(setup, args)
    else:
        option = arm.removeprefix("mrpo_") if arm in OPTION_ARMS else None
        result = run_mrpo(setup, args, arm, cached=arm != "mrpo_live", option=option)
    result["tokens_per_s"] = result["tokens"] / result["loop_s"]
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.device == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return result


# --- orchestration and report --------------------------------------------------------------


def spawn(arm: str, setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    setup = {**setup, "arm": arm}
    cmd = [sys.executable, __file__, "--arm", arm, "--setup", json.dumps(setup), *args.passthrough]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    med = {
        arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for arm, runs in results.items()
    }
    nan = float("nan")
    print(
        f"\n{'arm':<16}{'tokens/s':>10}{'loop s':>9}{'steps':>7}{'tokens':>9}"
        f"{'ref s':>8}{'peak GB':>9}{'largest':>9}{'padding':>9}{'computed':>9}{'window':>8}"
        f"{'1st step s':>11}{'later tok/s':>12}"
    )
    for arm, m in med.items():
        largest = f"{m['max_batch_rows']:.0f}x{m['max_batch_width']:.0f}"
        print(
            f"{arm:<16}{m['tokens_per_s']:>10.1f}{m['loop_s']:>9.1f}{m['steps']:>7.0f}"
            f"{m['tokens']:>9.0f}{m.get('reference_s', nan):>8.1f}{m['peak_rss_gb']:>9.2f}"
            f"{largest:>9}"
            f"{m.get('padding', nan):>9.3f}{m.get('computed_tokens', nan) / m['tokens']:>9.3f}"
            f"{m.get('logits_window', nan):>8.3f}"
            f"{m.get('first_step_s', nan):>11.2f}"
            f"{m.get('steady_tokens_per_s', nan):>12.1f}"
        )

    def ratio(a: str, b: str, key: str = "tokens_per_s") -> str:
        return f"{med[a][key] / med[b][key]:.3f}" if a in med and b in med else "n/a"

    print("\nspeed = tokens/s ratio (> 1: mrpo faster); memory = peak RSS ratio (< 1: smaller)")
    print(
        f"mrpo_live / trl (both run the reference each step): speed {ratio('mrpo_live', 'trl')}, "
        f"memory {ratio('mrpo_live', 'trl', 'peak_rss_gb')}"
    )
    print(
        f"mrpo_cached / trl_precompute (both precompute): speed "
        f"{ratio('mrpo_cached', 'trl_precompute')}, memory "
        f"{ratio('mrpo_cached', 'trl_precompute', 'peak_rss_gb')}"
    )
    print(
        f"mrpo_cached / trl (mrpo's cache vs TRL's default live reference): speed "
        f"{ratio('mrpo_cached', 'trl')}, "
        f"memory {ratio('mrpo_cached', 'trl', 'peak_rss_gb')}"
    )
    if "bare" in med and "mrpo_cached" in med:
        overhead = med["bare"]["tokens_per_s"] / med["mrpo_cached"]["tokens_per_s"]
        print(f"framework overhead, mrpo_cached step time / bare loop: {overhead:.3f}")
    if "mrpo_noshare" in med and "mrpo_cached" in med:
        print(
            "prefix sharing, mrpo_cached / mrpo_noshare: speed "
            f"{ratio('mrpo_cached', 'mrpo_noshare')}"
            f", memory {ratio('mrpo_cached', 'mrpo_noshare', 'peak_rss_gb')}"
        )
    if "mrpo_cached" in med and "computed_tokens" in med["mrpo_cached"]:
        saved = 1 - med["mrpo_cached"]["computed_tokens"] / med["mrpo_cached"]["tokens"]
        print(f"mrpo_cached computes {1 - saved:.1%} of the tokens asked for ({saved:.1%} saved)")
    for arm in (*LAYOUT_ARMS, *OPTION_ARMS):
        if arm in med and "mrpo_cached" in med:
            print(
                f"{arm} / mrpo_cached: speed {ratio(arm, 'mrpo_cached')} (after the first step "
                f"{ratio(arm, 'mrpo_cached', 'steady_tokens_per_s')}), memory "
                f"{ratio(arm, 'mrpo_cached', 'peak_rss_gb')}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="random", help="random (4-layer SmolLM2 width), packaged, or a dir"
    )
    parser.add_argument("--layers", type=int, default=4, help="layers of the random model")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all arms")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="in every arm (TRL's default)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.arm:
        print(json.dumps(run_arm(args.arm, json.loads(args.setup), args)))
        return
    arms = args.arms.split(",")
    unknown = set(arms) - set(ARMS + OPTION_ARMS + GPU_ARMS)
    if unknown:
        known = ARMS + OPTION_ARMS + GPU_ARMS
        raise SystemExit(f"--arms: unknown {sorted(unknown)}; choose from {known}")
    if args.device == "cpu" and set(arms) & set(GPU_ARMS):
        raise SystemExit(f"--arms: {sorted(set(arms) & set(GPU_ARMS))} need --device cuda")
    if args.model not in ("random", "packaged") and not Path(args.model).is_dir():
        raise SystemExit(f"--model {args.model!r}: random, packaged or a model directory")
    args.passthrough = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("model", "layers", "pairs", "batch_size", "max_length", "device", "precision")
    ] + ["--gradient-checkpointing"] * args.gradient_checkpointing
    import torch
    import transformers
    import trl
    from bench_train import run_rounds

    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), transformers {transformers.__version__}, trl {trl.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="mrpo-bench-trl-") as tmp:
        setup = {**prepare(args, Path(tmp)), "scratch": tmp}
        print(
            f"model {args.model} ({setup['source']}), {setup['pairs']} HH-RLHF pairs, batch "
            f"{args.batch_size}, max length {args.max_length}, gradient checkpointing "
            f"{'on' if args.gradient_checkpointing else 'off'}, {args.rounds} rounds of {arms}"
        )
        results = run_rounds(
            arms,
            args.rounds,
            lambda arm: spawn(arm, setup, args),
            lambda r, arm, res: print(
                f"round {r}: {arm:<15} {res['tokens_per_s']:8.1f} tokens/s "
                f"{res['peak_rss_gb']:6.2f} GB",
                flush=True,
            ),
        )
    report(results)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
