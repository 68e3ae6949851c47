"""The training pipeline end to end on tiny models: updates, references, resume, records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mrpo.cli.train import train
from mrpo.compare.records import read_metrics
from mrpo.data.collate import PreferenceCollator
from mrpo.data.preference import load_preference_data
from mrpo.data.tokenize import tokenize_pairs
from mrpo.models import load_model, load_tokenizer
from mrpo.objectives import get_objective
from mrpo.references import LiveReferences, ReferenceEnsemble, ReferenceSpec
from mrpo.training.module import NonFiniteLossError, PreferenceModule


def read_metric(run_dir: Path, name: str) -> dict[int, float]:
    """step -> value of one metric from the run's CSV record (all attempts)."""
    return read_metrics(run_dir).get(name, {})


def quiet_trainer(**options) -> L.Trainer:
    """A Lightning ``Trainer`` without logger, checkpoints, progress bar or model summary."""
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def test_one_step_changes_every_policy_tensor_and_no_reference(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    examples = load_preference_data(str(hh_file)).examples[:4]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = tokenize_pairs(examples, tokenizer, max_length=96).pairs
    policy = load_model(str(tiny_model_dir))
    policy.train()
    ensemble = ReferenceEnsemble(
        [
            ReferenceSpec("base", source=str(tiny_model_dir)),
            ReferenceSpec("prompted", system_prompt="Be brief."),
        ],
        policy_source=str(tiny_model_dir),
        max_length=96,
        cache_dir=tmp_path / "cache",
    )
    live = LiveReferences(ensemble, policy=policy, examples=examples)
    ref_models = list(live._models.values())
    assert ref_models and all(m is not policy for m in ref_models)
    ref_before = [p.detach().clone() for m in ref_models for p in m.parameters()]
    policy_before = {n: p.detach().clone() for n, p in policy.named_parameters()}

    module = PreferenceModule(
        policy,
        tokenizer,
        get_objective("mrpo", beta=0.1, num_refs=2),
        lambda params: torch.optim.SGD(params, lr=1.0),
        scheduler_name="constant",
        live_references=live,
    )
    loader = DataLoader(pairs, batch_size=4, collate_fn=PreferenceCollator(tokenizer.pad_token_id))
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, train_dataloaders=loader)

    changed = {
        n: not torch.equal(p.detach(), policy_before[n]) for n, p in policy.named_parameters()
    }
    assert all(changed.values()), [n for n, c in changed.items() if not c]
    ref_after = [p.detach() for m in ref_models for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ref_before, ref_after, strict=True))
    assert all(not p.requires_grad for m in ref_models for p in m.parameters())


def test_nonfinite_loss_stops_naming_step_and_rows(tiny_model_dir: Path, hh_file: Path) -> None:
    examples = load_preference_data(str(hh_file)).examples[:2]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = tokenize_pairs(examples, tokenizer, max_length=96).pairs
    nan_refs = torch.full((1, 2), float("nan"))
    collate = PreferenceCollator(tokenizer.pad_token_id, ref_lookup=lambda i: (nan_refs, nan_refs))
    module = PreferenceModule(
        load_model(str(tiny_model_dir)),
        tokenizer,
        get_objective("dpo", beta=0.1),
        lambda params: torch.optim.SGD(params, lr=0.1),
        scheduler_name="constant",
    )
    trainer = quiet_trainer(max_steps=1)
    loader = DataLoader(pairs, batch_size=2, collate_fn=collate)
    with pytest.raises(NonFiniteLossError, match=r"global step 0, batch 0 \(data rows \[0, 1\]\)"):
        trainer.fit(module, train_dataloaders=loader)


def test_train_writes_records_and_reuses_the_reference_cache(compose_train, tmp_path: Path) -> None:
    first = train(compose_train(["references=prompted", "references.num_refs=3"]))
    run_dir = Path(first["run_dir"])
    assert first["reference_cache"]["misses"] == 3 and first["reference_cache"]["hits"] == 0
    assert (run_dir / "config.yaml").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_refs"] == 3 and summary["loss"] == "mrpo"
    assert summary["global_step"] == 2
    for key in ("val/rewards/accuracy", "val/rewards/margin", "val/policy_margin_accuracy"):
        assert 0 <= summary[f"final/{key}"] <= 1 or key.endswith("margin")
    losses = read_metric(run_dir, "train/loss")
    assert sorted(losses) == [0, 1] and all(torch.isfinite(torch.tensor(list(losses.values()))))
    weights = [read_metric(run_dir, f"train/ref_weight/{k}") for k in range(3)]
    assert all(len(w) == 2 for w in weights)
    for step in (0, 1):
        assert sum(w[step] for w in weights) == pytest.approx(1.0, abs=1e-5)
    assert (run_dir / "model" / "config.json").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    # Same references and rows, another objective: every reference comes from the cache.
    second = train(
        compose_train(
            ["references=prompted", "references.num_refs=2", "loss=multi_dpo"],
            output_dir=tmp_path / "second",
        )
    )
    assert second["reference_cache"]["hits"] == 2 and second["reference_cache"]["misses"] == 0
    assert second["reference_cache"]["forward_passes"] == 0
    # The record says what ran on what: the same rows give the same data fingerprints.
    for split in ("train", "val"):
        assert summary["data"][f"{split}_fingerprint"].startswith("sha256:")
        assert second["data"][f"{split}_fingerprint"] == summary["data"][f"{split}_fingerprint"]
    assert summary["data"]["train_fingerprint"] != summary["data"]["val_fingerprint"]
    assert {"torch", "transformers", "lightning"} <= set(summary["environment"]["packages"])


def test_cross_tokenizer_ensemble_trains(compose_train, tiny_zephyr_model_dir: Path) -> None:
    pool = (
        "references.pool=[{name: self, source: self}, "
        f"{{name: other, source: '{tiny_zephyr_model_dir}', length_normalize: true}}]"
    )
    summary = train(compose_train([pool, "loss.length_normalize=true"]))
    assert summary["num_refs"] == 2
    run_dir = Path(summary["run_dir"])
    losses = read_metric(run_dir, "train/loss")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses.values())
    # ARWC gives the other-tokenizer reference a real, non-trivial share.
    assert 0 < read_metric(run_dir, "train/ref_weight/1")[0] < 1


@pytest.mark.parametrize(
    ("weighting", "accumulate"),
    # Stateful weightings: the sliding window, and the bandit driven per accumulated step.
    [("sliding_window", 1), ("thompson", 2)],
)
def test_resumed_run_reproduces_the_uninterrupted_losses(
    compose_train, tmp_path: Path, weighting: str, accumulate: int
) -> None:
    common = [
        "trainer.max_steps=6",
        "data.max_samples=16",
        "data.val_size=4",
        f"data.batch_size={2 // accumulate}",
        f"trainer.accumulate_grad_batches={accumulate}",
        "callbacks.checkpoint.every_n_train_steps=3",
        "save_model=false",
        "trainer.max_epochs=2",
        "references=prompted",
        "references.num_refs=2",
        f"weights={weighting}",
        # The interrupted attempt stops early through max_steps; a constant schedule keeps its
        # learning rates equal to the full run's (a schedule's length depends on max_steps).
        "scheduler=constant",
        "scheduler.warmup_ratio=0",
    ]
    full = train(compose_train(common, output_dir=tmp_path / "full"))
    reference = read_metric(Path(full["run_dir"]), "train/loss")
    assert sorted(reference) == [0, 1, 2, 3, 4, 5]

    resumed_dir = tmp_path / "resumed"
    train(compose_train([*common, "trainer.max_steps=3"], output_dir=resumed_dir))
    train(compose_train([*common, "ckpt_path=last"], output_dir=resumed_dir))
    resumed = read_metric(resumed_dir, "train/loss")
    for step in range(6):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step
    if weighting == "thompson":  # the same arms drawn after the resume, one per step
        arms = read_metric(Path(full["run_dir"]), "train/bandit/arm")
        assert sorted(arms) == list(range(6))
        assert read_metric(resumed_dir, "train/bandit/arm") == arms


def test_train_evaluates_native_and_lm_eval_tasks_offline(compose_train, tmp_path: Path) -> None:
    """``eval.tasks=[gsm8k, truthfulqa, tiny_mc]``: the built-in tasks on a local mirror and a
    local lm-eval task YAML, with nothing reachable but the files."""
    from support.evaldata import write_eval_data
    from support.harness import write_tiny_harness_tasks

    data = write_eval_data(tmp_path / "evaldata")
    tasks = write_tiny_harness_tasks(tmp_path / "tasks")
    run_dir = tmp_path / "run"
    summary = train(
        compose_train(
            [
                f"paths.data_dir={data}",
                "eval.tasks=[gsm8k,truthfulqa,tiny_mc]",
                "eval.final_limit=2",
                "eval.max_new_tokens=4",
                f"eval.harness.include_path=[{tasks}]",
                "eval.harness.include_defaults=false",
            ],
            output_dir=run_dir,
        )
    )
    for key in ("eval/gsm8k/strict_match", "eval/truthfulqa/mc2", "eval/tiny_mc/acc"):
        assert 0.0 <= summary[f"final/{key}"] <= 1.0, key
    assert summary["final/eval/tiny_mc/num_samples"] == 2
    final = json.loads((run_dir / "eval" / "final_results.json").read_text())
    assert final["tasks"]["tiny_mc"]["versions"] == {"tiny_mc": 1.0}
    assert summary["environment"]["packages"]["lm_eval"]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradients_are_dropped_after_each_optimizer_step(
    tiny_model_dir: Path, hh_file: Path, accumulate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No gradient outlives its optimizer step (none beside the next forward's activations),
    those of an accumulation window are kept until its step, and the weights trained are
    those of Lightning's own order (gradients zeroed inside the next step)."""
    examples = load_preference_data(str(hh_file)).examples[:4]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = tokenize_pairs(examples, tokenizer, max_length=96).pairs
    collate = PreferenceCollator(
        tokenizer.pad_token_id, ref_lookup=lambda i: (torch.zeros(1, 1), torch.zeros(1, 1))
    )

    class GradientsAtBatchStart(L.Callback):
        def __init__(self) -> None:
            self.seen: list[bool] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.seen.append(any(p.grad is not None for p in module.policy.parameters()))

    def fit() -> tuple[list[bool], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        module = PreferenceModule(
            load_model(str(tiny_model_dir)),
            tokenizer,
            get_objective("dpo", beta=0.1),
            lambda params: torch.optim.AdamW(params, lr=1e-2),
            scheduler_name="constant",
        )
        probe = GradientsAtBatchStart()
        trainer = quiet_trainer(max_epochs=1, accumulate_grad_batches=accumulate, callbacks=[probe])
        loader = DataLoader(pairs, batch_size=1, collate_fn=collate)
        trainer.fit(module, train_dataloaders=loader)
        assert trainer.global_step == 4 // accumulate
        return probe.seen, {n: p.detach().clone() for n, p in module.policy.named_parameters()}

    seen, weights = fit()
    # A window's later batches see its earlier gradients; a window's first batch sees none.
    assert seen == [i % accumulate != 0 for i in range(4)]
    monkeypatch.setattr(PreferenceModule, "optimizer_step", L.LightningModule.optimizer_step)
    lightning_seen, lightning_weights = fit()
    assert lightning_seen == [i > 0 for i in range(4)]  # Lightning's order keeps them
    assert weights.keys() == lightning_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, lightning_weights[name], rtol=0, atol=0, msg=name)
