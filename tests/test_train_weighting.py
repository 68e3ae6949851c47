"""Weightings that need the training loop: Thompson sampling and offline (vdw, vaw) fits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mrpo.callbacks.bandit import ThompsonFeedback
from mrpo.cli.train import prepare_data, train
from mrpo.compare.records import read_metrics
from mrpo.config import TrainConfig, to_dataclass
from mrpo.data.collate import PreferenceCollator
from mrpo.data.preference import load_preference_data
from mrpo.data.tokenize import tokenize_pairs
from mrpo.groups.references import build_ensemble
from mrpo.models import load_model, load_tokenizer
from mrpo.objectives import get_objective, vaw_weights, vdw_weights
from mrpo.training.module import PreferenceModule

PRIOR = (5.0, 5.0)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_thompson_run_selects_and_rewards_arms(compose_train, accumulate: int) -> None:
    cfg = compose_train(
        [
            "references=prompted",
            "references.num_refs=3",
            "weights=thompson",
            f"weights.prior=[{PRIOR[0]},{PRIOR[1]}]",
            "weights.feedback_size=4",
            f"trainer.accumulate_grad_batches={accumulate}",
        ]
    )
    summary = train(cfg)
    assert summary["global_step"] == 2
    # One draw and one reward per optimizer step, whatever the accumulation; every micro-batch
    # of a step took a single-reference step against its arm: the logged weights are one-hot.
    metrics = read_metrics(summary["run_dir"])
    arms = metrics["train/bandit/arm"]
    assert len(arms) == 2 and all(a in (0.0, 1.0, 2.0) for a in arms.values())
    for step, arm in arms.items():
        assert metrics[f"train/ref_weight/{int(arm)}"][step] == pytest.approx(1.0)
    # Each step rewarded the arm it drew: that arm's Beta counts grew by one, the others' not.
    last = torch.load(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    state = last["mrpo_objective_state"]["weighting"]
    pulls = Counter(int(a) for a in arms.values())
    for k in range(3):
        assert state["alpha"][k] + state["beta"][k] == sum(PRIOR) + pulls[k]
    assert sum(state["alpha"]) - 3 * PRIOR[0] + sum(state["beta"]) - 3 * PRIOR[1] == 2


def three_references(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, B) cached reference log-probs of chosen and rejected that differ per reference."""
    rows = torch.arange(3, dtype=torch.float32)[:, None] + index[None, :].float()
    return -10.0 - rows, -12.0 - 0.5 * rows


def record_bandit(bandit, monkeypatch: pytest.MonkeyPatch, steps: Callable[[], int]) -> list:
    """Record the bandit's draws, rewards (with the optimizer steps taken by then) and the arm
    each weighted batch used, in call order."""
    events: list[tuple[str, ...]] = []
    select, update, weights = bandit.select, bandit.update, bandit.weights

    def recorded_select() -> int:
        events.append(("select", select()))
        return events[-1][1]

    def recorded_update(arm: int, improved: bool) -> None:
        events.append(("update", arm, steps()))
        update(arm, improved=improved)

    def recorded_weights(ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
        used = weights(ref_chosen, ref_rejected)
        events.append(("weights", int(used[0].argmax())))
        return used

    monkeypatch.setattr(bandit, "select", recorded_select)
    monkeypatch.setattr(bandit, "update", recorded_update)
    monkeypatch.setattr(bandit, "weights", recorded_weights)
    return events


@pytest.mark.parametrize("accumulate", [1, 2])
def test_thompson_draws_and_rewards_once_per_optimizer_step(
    tiny_model_dir: Path, hh_file: Path, accumulate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N micro-batches at accumulate_grad_batches=a: N/a draws and N/a rewards, each reward after
    its optimizer step, and every micro-batch of a step weighted by that step's arm alone."""
    micro_batches = 8
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples = load_preference_data(str(hh_file)).examples[:micro_batches]
    pairs = tokenize_pairs(examples, tokenizer, max_length=96).pairs
    collate = PreferenceCollator(tokenizer.pad_token_id, ref_lookup=three_references)
    objective = get_objective("multi_dpo", weighting="thompson", num_refs=3, seed=0)
    events = record_bandit(objective.weighting, monkeypatch, lambda: module.global_step)
    torch.manual_seed(0)
    module = PreferenceModule(
        load_model(str(tiny_model_dir)),
        tokenizer,
        objective,
        lambda params: torch.optim.AdamW(params, lr=1e-2),
        scheduler_name="constant",
    )
    trainer = L.Trainer(
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        callbacks=[ThompsonFeedback([collate(pairs[:2])])],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(pairs, batch_size=1, collate_fn=collate))
    steps = micro_batches // accumulate
    assert trainer.global_step == steps
    expected: list[tuple[str, ...]] = []
    for step in range(steps):
        arm = events[len(expected)][1]  # whichever arm the bandit drew for this step
        expected += [("select", arm), *[("weights", arm)] * accumulate, ("update", arm, step + 1)]
    assert events == expected


@pytest.mark.parametrize(("strategy", "formula"), [("vdw", vdw_weights), ("vaw", vaw_weights)])
def test_offline_weights_are_fitted_on_validation(compose_train, strategy: str, formula) -> None:
    cfg = compose_train(["references=prompted", "references.num_refs=2", f"weights={strategy}"])
    summary = train(cfg)
    metrics = read_metrics(summary["run_dir"])
    used = [metrics[f"train/ref_weight/{k}"] for k in range(2)]
    # The weights the formula gives on the validation split's reference log-probs (read back
    # from the cache the run filled): the run must have used exactly these, at every step.
    run_cfg = to_dataclass(cfg, TrainConfig)
    data = prepare_data(run_cfg)
    val = build_ensemble(run_cfg).precompute(data.val_examples, progress=False).logps
    index = torch.tensor([ex.index for ex in data.val_examples])
    rows = [ref.select(index) for ref in val]
    expected = formula(
        *(torch.stack([getattr(r, name) for r in rows]) for name in
          ("chosen", "rejected", "chosen_tokens", "rejected_tokens"))
    )  # fmt: skip
    for step in (0, 1):
        for k in range(2):
            assert used[k][step] == pytest.approx(float(expected[k]), abs=1e-6)
    if strategy == "vdw":  # margins of distinct references differ: not the uniform fallback
        assert abs(float(expected[0]) - 0.5) > 1e-4
